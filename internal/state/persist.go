package state

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
)

// persistRecord is one line of a persisted snapshot: a table name and one
// object of it.
type persistRecord struct {
	Table string          `json:"t"`
	Obj   json.RawMessage `json:"o"`
}

// Persist writes every object of the snapshot to w, one JSON record a line.
func (s *Snapshot) Persist(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	for _, table := range []string{tableIndex, tableNodes, tableClusters, tableJobs, tableTasks, tableServers,
		tableFSEntries, tableFSHistory, tableFSSnapshots, tableFSChunks, tableFSGarbage, tableCheckpoints, tableClusterCAs, tableClusterNets,
		tableCapKeys, tableFunctions} {
		it, err := s.txn.Get(table, "id")
		if err != nil {
			return err
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			b, err := json.Marshal(raw)
			if err != nil {
				return err
			}
			if err := enc.Encode(persistRecord{Table: table, Obj: b}); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}

// Restore builds a store from what Persist wrote.
func Restore(r io.Reader) (*Store, error) {
	s := New()
	tx := s.db.Txn(true)
	defer tx.Abort()
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<20))
	for {
		var rec persistRecord
		if err := dec.Decode(&rec); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("state: reading snapshot: %w", err)
		}
		var obj any
		switch rec.Table {
		case tableIndex:
			obj = &indexEntry{}
		case tableNodes:
			obj = &api.Node{}
		case tableClusters:
			obj = &api.Cluster{}
		case tableJobs:
			obj = &api.Job{}
		case tableTasks:
			obj = &api.Task{}
		case tableServers:
			obj = &api.ServerInfo{}
		case tableFSEntries:
			obj = &fsEntry{}
		case tableFSHistory:
			obj = &fsVersion{}
		case tableFSSnapshots:
			obj = &fsSnapshot{}
		case tableFSChunks:
			obj = &fsChunk{}
		case tableFSGarbage:
			obj = &fsGarbage{}
		case tableCheckpoints:
			obj = &checkpoint{}
		case tableClusterCAs:
			obj = &ClusterCA{}
		case tableClusterNets:
			obj = &clusterNet{}
		case tableCapKeys:
			obj = &CapabilityKey{}
		case tableFunctions:
			obj = &functionRecord{}
		default:
			return nil, fmt.Errorf("state: snapshot has unknown table %q", rec.Table)
		}
		if err := json.Unmarshal(rec.Obj, obj); err != nil {
			return nil, fmt.Errorf("state: decoding %s record: %w", rec.Table, err)
		}
		if err := tx.Insert(rec.Table, obj); err != nil {
			return nil, fmt.Errorf("state: restoring %s: %w", rec.Table, err)
		}
	}
	if err := upgradeJobs(tx); err != nil {
		return nil, err
	}
	tx.Commit()
	return s, nil
}

// upgradeJobs fills the per-group status of jobs persisted before it
// existed: every task of theirs has a row, so all are materialized and
// their counts are recounted from the rows.
func upgradeJobs(tx *memdb.Txn) error {
	for _, j := range collect[*api.Job](tx, nil, tableJobs, "id") {
		if len(j.GroupStatus) == len(j.Groups) {
			continue
		}
		nj := *j
		nj.GroupStatus = make([]api.GroupStatus, len(j.Groups))
		for gi, g := range j.Groups {
			nj.GroupStatus[gi] = api.GroupStatus{Name: g.Name, Materialized: g.Count}
		}
		for _, t := range collect[*api.Task](tx, nil, tableTasks, "group_prefix", j.ID) {
			countGroup(&nj, t.Group, "", t.State)
		}
		if err := tx.Insert(tableJobs, &nj); err != nil {
			return fmt.Errorf("state: upgrading job %s: %w", j.ID, err)
		}
	}
	return nil
}
