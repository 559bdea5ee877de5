"""The web client: plain HTML, CSS and ES modules in ``static/``, served by the server on its WebSocket port
(see ``utuvox/server/web.py``). No build step: the files here are the files the browser runs."""
