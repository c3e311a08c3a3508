"""lipverify's interior-point algorithms for slope-QC LMIs (entry: :mod:`lipverify.solvers.ipm`)."""
