"""The console's web layer: blueprints, socket handlers and request guards."""
