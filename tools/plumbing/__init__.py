"""What turns a domain function into an MCP tool: the registry, the handler context, shared
parameter types, errors and cursors."""
