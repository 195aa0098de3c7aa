"""The configuration: ``schema`` (the vocabulary), ``core`` ([agent], [mail]), ``load`` (composes every section)."""
