"""swarmfl.sim: the swarm simulator (virtual time, a networkx world, churn, runner, metrics)."""
