"""Student architecture search: the space (``space``), one trial (``trial``), the front (``pareto``), the
Tune experiment around them (``run``)."""
