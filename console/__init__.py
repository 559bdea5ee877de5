"""``utuvox-console``: the operators' cmd2 console over the server's admin socket (see console.app)."""
