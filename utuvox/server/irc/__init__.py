"""IRC on UtuVox: per-connection IRC state (registration, capabilities, SASL, nick, labels, batches)
over the one session loop. The line format and the rendering of events live in utuvox.protocol.irc."""
