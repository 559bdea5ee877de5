"""The domain: accounts, rooms, membership, fan-out, files, permissions. Knows rules, not sockets."""
