"""Text generation: sampling rules and the cached generation loop (`radial generate`)."""
