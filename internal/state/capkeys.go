package state

import (
	"cmp"
	"slices"

	"github.com/hashicorp/go-memdb"
)

// tableCapKeys holds the keys that sign capabilities (package capability).
const tableCapKeys = "capability_keys"

// TableCapabilityKeys names the capability keys' table for blocking
// queries.
const TableCapabilityKeys = tableCapKeys

// CapabilityKey is a key that servers sign capabilities with, as they keep
// it: the ed25519 seed, drawn once by the leader that found none and
// carried in the Raft entry so that every server holds the same key. It is
// an internal record: no API type carries the seed (agents get the public
// key only).
type CapabilityKey struct {
	ID          string
	Seed        []byte
	CreateIndex uint64
}

// CapabilityKeyRequest proposes the first capability key.
type CapabilityKeyRequest struct {
	Key CapabilityKey `json:"key"`
}

// CapabilityKeys returns the capability keys, oldest first (today at most
// one: keys are not rotated yet).
func (s *Snapshot) CapabilityKeys(ws memdb.WatchSet) []*CapabilityKey {
	// The iterator's watch covers the whole table, so a query waiting
	// for the first key wakes when it comes.
	keys := collect[*CapabilityKey](s.txn, ws, tableCapKeys, "id")
	slices.SortFunc(keys, func(a, b *CapabilityKey) int { return cmp.Compare(a.CreateIndex, b.CreateIndex) })
	return keys
}

// SetCapabilityKey stores the first capability key. Only the first one
// proposed is kept: a leader that proposed one just as another did (or
// before it saw the other's) finds the table taken and its key dropped,
// so every server signs with the same key.
func (s *Store) SetCapabilityKey(index uint64, req *CapabilityKeyRequest) error {
	return s.write(index, func(tx *writeTxn) error {
		it, err := tx.Get(tableCapKeys, "id")
		if err != nil {
			return err
		}
		if it.Next() != nil {
			return nil
		}
		k := req.Key
		k.CreateIndex = tx.index
		return tx.put(tableCapKeys, &k)
	})
}
