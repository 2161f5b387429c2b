"""Orchestration, one module per verb: run (evaluate, train, evaluate, report), train, evaluate, benchmark,
generate and score, the dry run; each reads as numbered steps over the components. Only recipes and the
command line print."""
