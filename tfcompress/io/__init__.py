"""Loading models into frozen GraphDefs and writing outputs atomically."""
