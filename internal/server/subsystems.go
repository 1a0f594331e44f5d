package server

// Subsystems (package httpapi's Subsystem) are families of routes and
// leader loops with packages of their own: the server builds them here,
// before its API, registers their routes in routes(), runs their leader
// loops while it leads (monitorLeadership) and closes them at shutdown.

// setupSubsystems builds the server's subsystems.
func (s *Server) setupSubsystems() error {
	return nil
}

// closeSubsystems closes the subsystems, last built first.
func (s *Server) closeSubsystems() {
	for i := len(s.subsystems) - 1; i >= 0; i-- {
		if err := s.subsystems[i].Close(); err != nil {
			s.log.Warn("closing a subsystem", "err", err)
		}
	}
}
