//go:build ignore

// (The line above keeps the go tool from treating this C file as part of
// the Go test package in this directory; build it with build.sh.)

/*
 * ring: shows where each MPI rank runs and that messages cross between them.
 *
 * Every rank prints where it is, then a token goes once round the ring:
 * rank 0 sends it to rank 1, rank r passes it on to r+1, and the last rank
 * sends it back to rank 0. The token carries a counter and the sender's
 * host name, so each receiver can say which host the message came from.
 *
 * Output on stdout (each line flushed at once):
 *   rank R of N host H node NODE          every rank; H is gethostname(),
 *                                         NODE is $SHOAL_NODE or - when unset
 *   rank R got token from rank P on host HP   every rank, P = R-1 mod N
 *   ring ok                               rank 0, when the token came back
 *                                         having visited every rank once
 * On a wrong token rank 0 prints "ring broken: ..." on stderr and the job
 * aborts with status 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#define HOST_MAX 256

/* token is sent as bytes: all ranks of a job run the same binary on the
 * same kind of machine. */
struct token {
	int counter;         /* ranks that have held the token */
	int sender;          /* rank that sent it */
	char host[HOST_MAX]; /* the sender's host name */
};

static int rank;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	/* One write per message, so that messages of ranks failing together
	 * do not mix on mpirun's stderr. */
	char msg[1024];
	int n = snprintf(msg, sizeof msg, "%s: rank %d: ", "ring", rank);
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

/* say prints one line on stdout and flushes it. */
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

int main(int argc, char **argv)
{
	if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
		fprintf(stderr, "ring: MPI_Init failed\n");
		return 1;
	}
	int n;
	check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
	check(MPI_Comm_size(MPI_COMM_WORLD, &n), "MPI_Comm_size");

	char host[HOST_MAX];
	if (gethostname(host, sizeof host) != 0)
		die("gethostname: %s", strerror(errno));
	host[sizeof host - 1] = '\0';
	const char *node = getenv("SHOAL_NODE");
	if (node == NULL || node[0] == '\0')
		node = "-";
	say("rank %d of %d host %s node %s", rank, n, host, node);

	const int next = (rank + 1) % n, prev = (rank + n - 1) % n;
	struct token out = {.sender = rank}, in;
	memcpy(out.host, host, sizeof host);
	if (rank == 0) {
		/* Rank 0 starts the token and waits for it to come back; Sendrecv
		 * also covers a ring of one rank. */
		out.counter = 1;
		check(MPI_Sendrecv(&out, sizeof out, MPI_BYTE, next, 0, &in, sizeof in, MPI_BYTE, prev, 0,
		                   MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Sendrecv");
	} else {
		check(MPI_Recv(&in, sizeof in, MPI_BYTE, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
	}
	in.host[sizeof in.host - 1] = '\0';
	say("rank %d got token from rank %d on host %s", rank, in.sender, in.host);
	if (in.sender != prev)
		die("ring broken: token from rank %d, expected rank %d", in.sender, prev);

	if (rank != 0) {
		out.counter = in.counter + 1;
		check(MPI_Send(&out, sizeof out, MPI_BYTE, next, 0, MPI_COMM_WORLD), "MPI_Send");
	} else if (in.counter != n) {
		die("ring broken: token came back with counter %d, expected %d", in.counter, n);
	} else {
		say("ring ok");
	}
	check(MPI_Finalize(), "MPI_Finalize");
	return 0;
}
