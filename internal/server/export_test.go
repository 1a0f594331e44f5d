package server

// SnapshotNow makes Raft take a snapshot of the state now, so that a test
// can restart the server from it.
func (s *Server) SnapshotNow() error { return s.raft.Snapshot().Error() }
