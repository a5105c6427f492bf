"""The HTTP side: the app factory (`app.make_app`), the base handlers, signature checks and one
module per surface (`extension`, `install`, `webhooks`, `health`), plus the process lifecycle
(`server`)."""
