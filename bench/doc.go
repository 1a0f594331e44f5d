// Package bench holds Shoal's benchmarks. Run them with
//
//	go test ./bench -run '^$' -bench . -benchtime 1x
//
// Each end-to-end figure is reported next to a baseline measured in the
// same run (for example the machine's raw fork/exec rate), as a ratio,
// because absolute times drift on shared machines. Results are recorded in
// docs/benchmarks.md.
package bench
