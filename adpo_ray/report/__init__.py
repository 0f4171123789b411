"""Reports: tables with confidence intervals and plots."""
