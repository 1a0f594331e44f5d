//go:build ignore

// (The line above keeps the go tool from treating this C file as part of
// the Go test package in this directory; build it with build.sh.)

/*
 * heat: 1-D heat diffusion on a rod split across MPI ranks, with
 * application-assisted checkpoints in Shoal's checkpoint contract.
 *
 * Each rank owns --cells-per-rank consecutive cells of the rod. A step is an
 * explicit finite-difference update u' = u + r*(left - 2u + right) with
 * r = 0.25; the ends of the rod are held at 0. Before each step a rank swaps
 * its edge cells with its neighbours (MPI_Sendrecv), so every step really
 * talks to the ranks next to it.
 *
 * Checkpoints (when SHOAL_CHECKPOINT_DIR is set and --checkpoint-every K > 0):
 * after step s with s % K == 0, each rank writes its step and cells to
 * $SHOAL_CHECKPOINT_DIR/<rank>/state (through a temporary file and a rename,
 * so a reader never sees half a file), then runs
 * `shoal checkpoint commit <s/K>` and waits for it to exit. On start, when
 * SHOAL_RESTART_EPOCH=N is set, each rank reads that file back (Shoal has
 * restored epoch N there) and carries on from its step.
 *
 * Every update is a fixed sequence of IEEE double operations on the same
 * inputs, and the final checksum hashes the bits of every cell in rank and
 * cell order, so a run resumed from any checkpoint prints exactly the
 * checksum of an uninterrupted run with the same --cells-per-rank and rank
 * count.
 *
 * Output on stdout (each line flushed at once):
 *   mpi_init_done <unix seconds>.<nanoseconds>   every rank, right after MPI_Init
 *   resumed from epoch N at step S               rank 0, when resuming
 *   checksum <16 hex digits>                     rank 0, at the end
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

/* Diffusion number; stable for r <= 0.5. */
#define DIFFUSION 0.25

/* Checkpoint file layout (native byte order; the file is only ever read back
 * by the same program on the same kind of machine):
 *   magic[8] "SHOALHT1", then int64 epoch, step, rank, ranks, cells,
 *   then cells doubles, then zero padding up to --checkpoint-bytes. */
static const char ckpt_magic[8] = {'S', 'H', 'O', 'A', 'L', 'H', 'T', '1'};
#define CKPT_HEADER_BYTES (8 + 5 * 8)

/* Exit status of a rank told to fail by --fail-at-step. */
#define FAIL_STATUS 3

struct options {
	long long steps;            /* --steps */
	long long checkpoint_every; /* --checkpoint-every (0: never) */
	long long cells;            /* --cells-per-rank */
	long long checkpoint_bytes; /* --checkpoint-bytes (0: no padding) */
	long long sleep_ms;         /* --sleep-ms-per-step */
	long long fail_at_step;     /* --fail-at-step (-1: never) */
	long long fail_rank;        /* --fail-rank */
};

static int rank, nranks;

/* die prints a message for this rank and aborts the whole job: any error in
 * one rank makes the others' work useless. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	/* One write per message, so that messages of ranks failing together
	 * do not mix on mpirun's stderr. */
	char msg[1024];
	int n = snprintf(msg, sizeof msg, "%s: rank %d: ", "heat", rank);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof msg - (size_t)n - 1, fmt, ap);
	va_end(ap);
	strcat(msg, "\n");
	fputs(msg, stderr);
	fflush(stderr);
	MPI_Abort(MPI_COMM_WORLD, 1);
	exit(1); /* not reached */
}

/* check dies when an MPI call did not succeed. */
static void check(int rc, const char *what)
{
	if (rc != MPI_SUCCESS) {
		char msg[MPI_MAX_ERROR_STRING];
		int len = 0;
		if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
			snprintf(msg, sizeof msg, "error %d", rc);
		die("%s: %s", what, msg);
	}
}

/* say prints one line on stdout and flushes it, so that mpirun forwards it
 * at once and lines of different ranks do not mix. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vprintf(fmt, ap);
	va_end(ap);
	if (n < 0 || putchar('\n') == EOF || fflush(stdout) != 0)
		die("writing to stdout: %s", strerror(errno));
}

static void usage(void)
{
	if (rank == 0)
		fprintf(stderr,
		        "usage: heat [--steps N] [--checkpoint-every K] [--cells-per-rank N]\n"
		        "            [--checkpoint-bytes B] [--sleep-ms-per-step X]\n"
		        "            [--fail-at-step S --fail-rank R]\n");
}

/* parse_count parses a decimal integer in [min, max] or returns -1. */
static int parse_count(const char *s, long long min, long long max, long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* parse_options fills o from argv; on a bad argument rank 0 explains and
 * every rank returns -1. */
static int parse_options(int argc, char **argv, struct options *o)
{
	*o = (struct options){.steps = 4000, .checkpoint_every = 500, .cells = 4096,
	                      .checkpoint_bytes = 0, .sleep_ms = 0, .fail_at_step = -1,
	                      .fail_rank = 0};
	static const struct {
		const char *name;
		long long min, max;
		size_t offset;
	} flags[] = {
		{"--steps", 0, LLONG_MAX, offsetof(struct options, steps)},
		{"--checkpoint-every", 0, LLONG_MAX, offsetof(struct options, checkpoint_every)},
		{"--cells-per-rank", 1, 1LL << 30, offsetof(struct options, cells)},
		{"--checkpoint-bytes", 0, 1LL << 40, offsetof(struct options, checkpoint_bytes)},
		{"--sleep-ms-per-step", 0, 60000, offsetof(struct options, sleep_ms)},
		{"--fail-at-step", 0, LLONG_MAX, offsetof(struct options, fail_at_step)},
		{"--fail-rank", 0, INT_MAX, offsetof(struct options, fail_rank)},
	};
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage();
			return -1;
		}
		size_t f;
		for (f = 0; f < sizeof flags / sizeof flags[0]; f++)
			if (strcmp(argv[i], flags[f].name) == 0)
				break;
		if (f == sizeof flags / sizeof flags[0]) {
			if (rank == 0)
				fprintf(stderr, "heat: unknown argument %s\n", argv[i]);
			usage();
			return -1;
		}
		long long *dst = (long long *)((char *)o + flags[f].offset);
		if (i + 1 >= argc || parse_count(argv[i + 1], flags[f].min, flags[f].max, dst) != 0) {
			if (rank == 0)
				fprintf(stderr, "heat: %s needs an integer from %lld to %lld%s%s\n",
				        flags[f].name, flags[f].min, flags[f].max,
				        i + 1 < argc ? ", got " : "", i + 1 < argc ? argv[i + 1] : "");
			return -1;
		}
		i++;
	}
	return 0;
}

/* initial is the rod's starting temperature at global cell g: a few hot
 * spots of different heights on a cold rod. */
static double initial(long long g, long long total)
{
	long long spot = total / 7 + 1;
	if (g % spot < spot / 8)
		return 100.0 + (double)(g / spot % 5) * 25.0;
	return 0.0;
}

/* write_all writes n bytes or returns -1. */
static int write_all(FILE *f, const void *p, size_t n)
{
	return fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* save_checkpoint writes this rank's state for epoch into dir/state: the
 * whole file goes to dir/state.tmp first and is renamed over dir/state, so
 * the state file is always one complete epoch. Durability is Shoal's job
 * once `shoal checkpoint commit` returns, so there is no fsync here. */
static void save_checkpoint(const char *dir, long long epoch, long long step,
                            const double *cells, long long ncells, long long pad_to)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	if (snprintf(path, sizeof path, "%s/state", dir) >= (int)sizeof path ||
	    snprintf(tmp, sizeof tmp, "%s/state.tmp", dir) >= (int)sizeof tmp)
		die("checkpoint path under %s is too long", dir);
	FILE *f = fopen(tmp, "wb");
	if (f == NULL)
		die("creating %s: %s", tmp, strerror(errno));
	int64_t hdr[5] = {epoch, step, rank, nranks, ncells};
	long long size = CKPT_HEADER_BYTES + ncells * (long long)sizeof(double);
	if (write_all(f, ckpt_magic, sizeof ckpt_magic) != 0 || write_all(f, hdr, sizeof hdr) != 0 ||
	    write_all(f, cells, (size_t)ncells * sizeof(double)) != 0)
		die("writing %s: %s", tmp, strerror(errno));
	/* Padding stands in for a real application's larger state (benchmarks);
	 * it is written, not left as a hole, so it costs what real data costs. */
	static const char zeros[1 << 16];
	while (size < pad_to) {
		long long n = pad_to - size < (long long)sizeof zeros ? pad_to - size : (long long)sizeof zeros;
		if (write_all(f, zeros, (size_t)n) != 0)
			die("writing %s: %s", tmp, strerror(errno));
		size += n;
	}
	if (fclose(f) != 0)
		die("writing %s: %s", tmp, strerror(errno));
	if (rename(tmp, path) != 0)
		die("renaming %s to %s: %s", tmp, path, strerror(errno));
}

/* load_checkpoint reads this rank's state of epoch from dir/state into
 * cells and returns its step. */
static long long load_checkpoint(const char *dir, long long epoch, double *cells, long long ncells)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof path, "%s/state", dir) >= (int)sizeof path)
		die("checkpoint path under %s is too long", dir);
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		die("resuming from epoch %lld: opening %s: %s", epoch, path, strerror(errno));
	char magic[sizeof ckpt_magic];
	int64_t hdr[5];
	if (fread(magic, 1, sizeof magic, f) != sizeof magic || fread(hdr, 1, sizeof hdr, f) != sizeof hdr)
		die("resuming from epoch %lld: %s is truncated", epoch, path);
	if (memcmp(magic, ckpt_magic, sizeof magic) != 0)
		die("resuming from epoch %lld: %s is not a heat checkpoint", epoch, path);
	if (hdr[0] != epoch)
		die("resuming from epoch %lld: %s holds epoch %" PRId64, epoch, path, hdr[0]);
	if (hdr[2] != rank || hdr[3] != nranks || hdr[4] != ncells)
		die("resuming from epoch %lld: %s is rank %" PRId64 " of %" PRId64 " with %" PRId64
		    " cells; this run is rank %d of %d with %lld cells",
		    epoch, path, hdr[2], hdr[3], hdr[4], rank, nranks, ncells);
	if (fread(cells, sizeof(double), (size_t)ncells, f) != (size_t)ncells)
		die("resuming from epoch %lld: %s is truncated", epoch, path);
	if (fclose(f) != 0)
		die("reading %s: %s", path, strerror(errno));
	if (hdr[1] < 0)
		die("resuming from epoch %lld: %s has a negative step", epoch, path);
	return hdr[1];
}

/* commit_checkpoint runs `shoal checkpoint commit epoch` and waits for it.
 * Shoal has its own copy of the rank's files once it exits 0. A failed
 * commit is reported but not fatal: the epoch is simply never complete, and
 * the run goes on to its next checkpoint. */
static void commit_checkpoint(long long epoch)
{
	char arg[32];
	snprintf(arg, sizeof arg, "%lld", epoch);
	/* Flush first so the child does not inherit (and repeat) buffered output. */
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		die("fork for shoal checkpoint commit: %s", strerror(errno));
	if (pid == 0) {
		char *argv[] = {"shoal", "checkpoint", "commit", arg, NULL};
		execvp(argv[0], argv);
		fprintf(stderr, "heat: rank %d: running shoal: %s\n", rank, strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			die("waiting for shoal checkpoint commit: %s", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "heat: rank %d: shoal checkpoint commit %lld failed (%s %d); continuing\n",
		        rank, epoch, WIFEXITED(status) ? "exit status" : "signal",
		        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
		fflush(stderr);
	}
}

/* fnv1a folds n bytes into the 64-bit FNV-1a hash h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 1099511628211ULL;
	}
	return h;
}

int main(int argc, char **argv)
{
	if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
		fprintf(stderr, "heat: MPI_Init failed\n");
		return 1;
	}
	struct timespec now;
	if (clock_gettime(CLOCK_REALTIME, &now) != 0)
		die("clock_gettime: %s", strerror(errno));
	check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
	check(MPI_Comm_size(MPI_COMM_WORLD, &nranks), "MPI_Comm_size");
	say("mpi_init_done %lld.%09ld", (long long)now.tv_sec, now.tv_nsec);

	struct options o;
	if (parse_options(argc, argv, &o) != 0) {
		MPI_Finalize();
		return 2;
	}
	const long long n = o.cells;

	/* This rank's checkpoint directory, if Shoal gave one. */
	const char *ckroot = getenv("SHOAL_CHECKPOINT_DIR");
	char ckdir[PATH_MAX] = "";
	if (ckroot != NULL && ckroot[0] != '\0') {
		if (snprintf(ckdir, sizeof ckdir, "%s/%d", ckroot, rank) >= (int)sizeof ckdir)
			die("SHOAL_CHECKPOINT_DIR is too long");
		struct stat st;
		if (stat(ckdir, &st) != 0)
			die("checkpoint directory %s: %s", ckdir, strerror(errno));
		if (!S_ISDIR(st.st_mode))
			die("checkpoint directory %s is not a directory", ckdir);
	}
	const char *re = getenv("SHOAL_RESTART_EPOCH");
	long long restart_epoch = 0;
	if (re != NULL && re[0] != '\0') {
		if (parse_count(re, 1, LLONG_MAX, &restart_epoch) != 0)
			die("SHOAL_RESTART_EPOCH=%s is not an epoch number", re);
		if (ckdir[0] == '\0')
			die("SHOAL_RESTART_EPOCH=%s but SHOAL_CHECKPOINT_DIR is not set", re);
	}

	/* u[0] and u[n+1] are ghost cells: copies of the neighbours' edge cells
	 * (or the rod's fixed 0 ends). */
	double *u = calloc((size_t)n + 2, sizeof *u);
	double *next = calloc((size_t)n + 2, sizeof *next);
	if (u == NULL || next == NULL)
		die("out of memory for %lld cells", n);

	long long step = 0;
	if (restart_epoch > 0) {
		step = load_checkpoint(ckdir, restart_epoch, u + 1, n);
		/* Every rank must resume from the same step, or the halo exchanges
		 * would pair different steps. */
		long long lo, hi;
		check(MPI_Allreduce(&step, &lo, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
		check(MPI_Allreduce(&step, &hi, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
		if (lo != hi)
			die("ranks' checkpoints of epoch %lld are at different steps (%lld to %lld)",
			    restart_epoch, lo, hi);
		if (rank == 0)
			say("resumed from epoch %lld at step %lld", restart_epoch, step);
	} else {
		for (long long i = 0; i < n; i++)
			u[i + 1] = initial((long long)rank * n + i, (long long)nranks * n);
	}

	const int left = rank > 0 ? rank - 1 : MPI_PROC_NULL;
	const int right = rank < nranks - 1 ? rank + 1 : MPI_PROC_NULL;
	const int fail_here = restart_epoch == 0 && o.fail_at_step >= 0 && o.fail_rank == rank;
	const struct timespec nap = {.tv_sec = o.sleep_ms / 1000, .tv_nsec = o.sleep_ms % 1000 * 1000000L};

	while (step < o.steps) {
		if (fail_here && step == o.fail_at_step) {
			fprintf(stderr, "heat: rank %d: failing at step %lld as asked (--fail-at-step)\n", rank, step);
			fflush(stderr);
			exit(FAIL_STATUS);
		}
		/* Halo exchange: my first cell goes left while the right
		 * neighbour's first cell arrives in my right ghost, and the other
		 * way round. MPI_PROC_NULL at the rod's ends leaves the ghost at 0. */
		check(MPI_Sendrecv(&u[1], 1, MPI_DOUBLE, left, 0, &u[n + 1], 1, MPI_DOUBLE, right, 0,
		                   MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Sendrecv left");
		check(MPI_Sendrecv(&u[n], 1, MPI_DOUBLE, right, 1, &u[0], 1, MPI_DOUBLE, left, 1,
		                   MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Sendrecv right");
		if (left == MPI_PROC_NULL)
			u[0] = 0.0;
		if (right == MPI_PROC_NULL)
			u[n + 1] = 0.0;
		for (long long i = 1; i <= n; i++)
			next[i] = u[i] + DIFFUSION * (u[i - 1] - 2.0 * u[i] + u[i + 1]);
		double *t = u;
		u = next;
		next = t;
		step++;

		if (ckdir[0] != '\0' && o.checkpoint_every > 0 && step % o.checkpoint_every == 0) {
			long long epoch = step / o.checkpoint_every;
			save_checkpoint(ckdir, epoch, step, u + 1, n, o.checkpoint_bytes);
			commit_checkpoint(epoch);
		}
		if (o.sleep_ms > 0)
			nanosleep(&nap, NULL);
	}

	/* Checksum: each rank hashes the bits of its cells in order; rank 0
	 * hashes those hashes in rank order. Fixed order, no floating-point
	 * reduction, so it is bit-for-bit reproducible. */
	uint64_t mine = fnv1a(14695981039346656037ULL, u + 1, (size_t)n * sizeof(double));
	uint64_t *all = NULL;
	if (rank == 0 && (all = malloc((size_t)nranks * sizeof *all)) == NULL)
		die("out of memory");
	check(MPI_Gather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD), "MPI_Gather");
	if (rank == 0) {
		uint64_t h = fnv1a(14695981039346656037ULL, all, (size_t)nranks * sizeof *all);
		say("checksum %016" PRIx64, h);
		free(all);
	}
	free(u);
	free(next);
	check(MPI_Finalize(), "MPI_Finalize");
	return 0;
}
