"""Tasks and helpers the tests load into real daemons (through the imports: config key)."""
