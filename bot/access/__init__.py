"""Who may do what on the local console: accounts, sessions, one-time sign-in links and the
control token of the command line. The model is described in docs/access.md.

Chat platforms keep their own identities (Discord roles, Slack user groups); this package is
only for the console, where the service itself has to know who is signed in."""
