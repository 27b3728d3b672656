"""The experiments of the research log: what each one is (registry) and how the suite runs them (suite)."""
