"""Operations: the server that runs a node (listeners, sweep, reload), the admin API and
the workers' master."""
