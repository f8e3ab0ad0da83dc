"""The zoo: a synthetic world, its corpora, and the build of the bundled model pair."""
