"""Sample UtuVox bots, each runnable as ``python -m bots.<name> --url ... --user ... --password ...``:

- :mod:`bots.echo` repeats private messages back to their sender;
- :mod:`bots.dice` answers ``!roll 2d6``, ``!time`` and ``!help`` in its rooms;
- :mod:`bots.greeter` welcomes whoever joins its rooms;
- :mod:`bots.archiver` keeps daily transcripts of its rooms, with no gap across restarts.

They use only the client SDK (:mod:`utuvox.client`) and the protocol; :mod:`bots.runner` holds what
they share (options, signing in, joining rooms). See bots/README.md to write your own.
"""
