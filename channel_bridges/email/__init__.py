"""The email bridge: IMAP/SMTP or the Gmail API."""
