"""dva's core runtime: nothing component-specific lives here."""
