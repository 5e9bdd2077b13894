"""Pure computation the tools use, with no database and no MCP: rules, identity normalisation,
channel formatting, chunking and embeddings."""
