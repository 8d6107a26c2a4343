"""sdl-agent: the decision maker of a self-driving lab."""
