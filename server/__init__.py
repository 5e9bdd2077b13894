"""crm-mcp MCP server: configuration, database, migrations, transports and the CLI."""

__version__ = "0.1.0"
