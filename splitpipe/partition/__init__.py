"""The partition planner: model loading, graph, cut discovery, profiling, cost model, Pareto front, export."""
