// Package state is Shoal's in-memory state store: go-memdb tables of nodes,
// clusters, jobs, tasks and servers, written only by the FSM with the Raft
// index of the entry being applied, and read by everything else through
// methods that take a [memdb.WatchSet] so that blocking queries come for free.
//
// Objects returned by read methods are shared with the store and must never
// be modified; write methods copy before changing anything.
package state

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// Errors returned by write methods. They are wrapped with detail that names
// the object; match them with errors.Is.
var (
	ErrNotFound = errors.New("state: not found")
	ErrConflict = errors.New("state: conflict")
	ErrInvalid  = errors.New("state: invalid")
	ErrNoRoom   = errors.New("state: not enough capacity")
)

// Store holds the state. Restore swaps the whole database, so readers that
// hold a watch set are woken through the abandon channel.
type Store struct {
	mu        sync.RWMutex // guards db and abandonCh (not the data: memdb is MVCC)
	db        *memdb.MemDB
	abandonCh chan struct{}
}

// New returns an empty store.
func New() *Store {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("state: bad schema: %v", err)) // a programming error
	}
	return &Store{db: db, abandonCh: make(chan struct{})}
}

func (s *Store) current() (*memdb.MemDB, chan struct{}) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db, s.abandonCh
}

// Snapshot returns a read-only, point-in-time view of the store.
func (s *Store) Snapshot() *Snapshot {
	db, ch := s.current()
	return &Snapshot{txn: db.Txn(false), abandonCh: ch}
}

// Abandon replaces the store's content with that of other (used by Raft
// snapshot restore) and wakes every blocked reader.
func (s *Store) Abandon(other *Store) {
	s.mu.Lock()
	old := s.abandonCh
	s.db = other.db
	s.abandonCh = make(chan struct{})
	s.mu.Unlock()
	close(old)
}

// Snapshot is a consistent read-only view. Every read method takes an
// optional watch set that is filled with channels that fire when the data
// read changes.
type Snapshot struct {
	txn       *memdb.Txn
	abandonCh chan struct{}
}

// Index returns the Raft index of the last write to any of the tables.
func (s *Snapshot) Index(tables ...string) uint64 {
	var max uint64
	for _, t := range tables {
		raw, err := s.txn.First(tableIndex, "id", t)
		if err == nil && raw != nil {
			if v := raw.(*indexEntry).Value; v > max {
				max = v
			}
		}
	}
	return max
}

// WatchTables adds channels for the named tables' index entries to ws, so
// that ws fires on any write to them.
func (s *Snapshot) WatchTables(ws memdb.WatchSet, tables ...string) {
	for _, t := range tables {
		ch, _, err := s.txn.FirstWatch(tableIndex, "id", t)
		if err == nil {
			ws.Add(ch)
		}
	}
	ws.Add(s.abandonCh)
}

// Wait blocks until ws fires or ctx ends; it reports whether it fired.
func Wait(ctx context.Context, ws memdb.WatchSet) bool {
	return ws.WatchCtx(ctx) == nil
}

// Tables that blocking queries name.
const (
	TableNodes       = tableNodes
	TableClusters    = tableClusters
	TableJobs        = tableJobs
	TableTasks       = tableTasks
	TableServers     = tableServers
	TableFS          = tableFSEntries
	TableChunks      = tableFSChunks
	TableGarbage     = tableFSGarbage
	TableCheckpoints = tableCheckpoints
)

// writeTxn is one write transaction stamped with a Raft index.
type writeTxn struct {
	*memdb.Txn
	index   uint64
	touched map[string]bool
	// Jobs and nodes modified in this transaction, written once at the end
	// so that a batch touching one job many times copies it once.
	jobs  map[string]*api.Job
	nodes map[string]*api.Node
}

// write runs fn in one transaction stamped with index; nothing is kept if fn
// returns an error.
func (s *Store) write(index uint64, fn func(tx *writeTxn) error) error {
	db, _ := s.current()
	tx := &writeTxn{Txn: db.Txn(true), index: index, touched: map[string]bool{},
		jobs: map[string]*api.Job{}, nodes: map[string]*api.Node{}}
	defer tx.Abort()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.flush(); err != nil {
		return err
	}
	for t := range tx.touched {
		if err := tx.Insert(tableIndex, &indexEntry{Table: t, Value: index}); err != nil {
			return fmt.Errorf("state: bumping index of %s: %w", t, err)
		}
	}
	tx.Commit()
	return nil
}

func (tx *writeTxn) put(table string, obj any) error {
	tx.touched[table] = true
	if err := tx.Insert(table, obj); err != nil {
		return fmt.Errorf("state: writing %s: %w", table, err)
	}
	return nil
}

func (tx *writeTxn) del(table string, obj any) error {
	tx.touched[table] = true
	if err := tx.Delete(table, obj); err != nil {
		return fmt.Errorf("state: deleting from %s: %w", table, err)
	}
	return nil
}

// flush writes the jobs and nodes modified through jobForWrite and
// nodeForWrite.
func (tx *writeTxn) flush() error {
	for _, j := range tx.jobs {
		j.ModifyIndex = tx.index
		if err := tx.put(tableJobs, j); err != nil {
			return err
		}
	}
	if err := tx.syncBlocks(); err != nil {
		return err
	}
	for _, n := range tx.nodes {
		n.ModifyIndex = tx.index
		if err := tx.put(tableNodes, n); err != nil {
			return err
		}
	}
	return nil
}
