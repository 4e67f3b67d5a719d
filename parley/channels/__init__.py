"""Provider clients, webhook parsing and loopback fakes for the channels Parley speaks."""
