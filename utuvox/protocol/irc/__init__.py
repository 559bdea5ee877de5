"""IRC as a codec: the line format (RFC 1459/2812 with IRCv3 message tags), its numerics, and how the
protocol's events render as IRC lines. Pure functions: no sockets, no sessions."""
