/*
 * PMDK peer of benches/persist.rs: the persistence floors of libpmem.
 *
 *   persist_floor PATH flush [N]   (run with PMEM_IS_PMEM_FORCE=1; PATH on /dev/shm)
 *   persist_floor PATH msync [N]   (without PMEM_IS_PMEM_FORCE; PATH in /var/tmp)
 *
 * Creates PATH (64 MiB, pmem_map_file(PMEM_FILE_CREATE | PMEM_FILE_EXCL)), removes it at the
 * end. Flush mode measures pmem_persist of one 64 B line (after an 8-byte store), of 4 lines
 * (256 B), pmem_memcpy_persist of 256 B and of 4 KiB (default N = 1,000,000 each); msync mode
 * measures pmem_msync of one page dirtied by an 8-byte store (default N = 1,000).
 *
 * Offsets as in the Rust bench: each op walks sequentially through a 4 MiB window, starting at
 * the same offset as pmstore's heap (1 MiB + 8 KiB into the file), advancing by its footprint
 * rounded up to a line (64 B, 256 B, 256 B, 4 KiB; 4 KiB for msync), wrapping at the window's
 * end. The window is touched (and persisted) before timing; each op gets N/10 untimed warm-up
 * iterations. Prints one JSON line per measurement.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libpmem.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE ((size_t)64 << 20)
#define BASE ((size_t)(1 << 20) + 8192) /* pmstore's heap_offset with default geometry */
#define WINDOW ((size_t)4 << 20)
#define PAGE_SZ ((size_t)4096)

static char *pool;
static int is_pmem;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct walk {
	size_t stride, next;
};

static inline size_t advance(struct walk *w)
{
	size_t off = BASE + w->next;
	w->next += w->stride;
	if (w->next + w->stride > WINDOW)
		w->next = 0;
	return off;
}

static char src256[256];
static char src4k[4096];

enum op { PERSIST_64B, PERSIST_4_LINES, COPY_256B, COPY_4KIB, MSYNC_1_PAGE };

static const char *const op_name[] = {
	"persist_64B", "persist_4_lines", "copy_nt_256B", "copy_nt_4KiB", "msync_1_page",
};
static const size_t op_stride[] = { 64, 256, 256, 4096, 4096 };

static inline void run_one(enum op op, size_t off)
{
	uint64_t v = off;
	switch (op) {
	case PERSIST_64B:
		memcpy(pool + off, &v, 8);
		pmem_persist(pool + off, 64);
		break;
	case PERSIST_4_LINES:
		memcpy(pool + off, &v, 8);
		pmem_persist(pool + off, 256);
		break;
	case COPY_256B:
		pmem_memcpy_persist(pool + off, src256, sizeof(src256));
		break;
	case COPY_4KIB:
		pmem_memcpy_persist(pool + off, src4k, sizeof(src4k));
		break;
	case MSYNC_1_PAGE:
		memcpy(pool + off, &v, 8);
		if (pmem_msync(pool + off, 8) != 0) {
			perror("pmem_msync");
			exit(1);
		}
		break;
	}
}

static void measure(enum op op, long n)
{
	struct walk w = { op_stride[op], 0 };
	long warm = n / 10;
	for (long i = 0; i < warm; i++)
		run_one(op, advance(&w));
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++)
		run_one(op, advance(&w));
	uint64_t t1 = now_ns();
	printf("{\"lib\":\"pmdk\",\"op\":\"%s\",\"ns_per_op\":%.1f,\"iters\":%ld,\"is_pmem\":%d}\n",
	       op_name[op], (double)(t1 - t0) / (double)n, n, is_pmem);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4 ||
	    (strcmp(argv[2], "flush") != 0 && strcmp(argv[2], "msync") != 0)) {
		fprintf(stderr, "usage: %s PATH flush|msync [ITERATIONS]\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	int flush_mode = strcmp(argv[2], "flush") == 0;
	long n = flush_mode ? 1000000 : 1000;
	if (argc == 4) {
		n = strtol(argv[3], NULL, 10);
		if (n <= 0) {
			fprintf(stderr, "bad iteration count %s\n", argv[3]);
			return 2;
		}
	}

	size_t mapped_len;
	pool = pmem_map_file(path, FILE_SIZE, PMEM_FILE_CREATE | PMEM_FILE_EXCL, 0644,
			     &mapped_len, &is_pmem);
	if (pool == NULL) {
		fprintf(stderr, "pmem_map_file %s: %s\n", path, pmem_errormsg());
		return 1;
	}
	/* pmem_map_file's is_pmem already honours PMEM_IS_PMEM_FORCE; ask pmem_is_pmem too. */
	int is_pmem2 = pmem_is_pmem(pool, mapped_len);
	fprintf(stderr, "pmdk %s: mode=%s mapped %zu bytes, is_pmem=%d pmem_is_pmem=%d\n", path,
		argv[2], mapped_len, is_pmem, is_pmem2);
	int ret = 0;
	if (flush_mode && !(is_pmem && is_pmem2)) {
		fprintf(stderr, "flush mode needs is_pmem (set PMEM_IS_PMEM_FORCE=1)\n");
		ret = 1;
		goto out;
	}
	if (!flush_mode && (is_pmem || is_pmem2)) {
		fprintf(stderr, "msync mode needs !is_pmem (unset PMEM_IS_PMEM_FORCE)\n");
		ret = 1;
		goto out;
	}

	memset(src256, 0x5a, sizeof(src256));
	memset(src4k, 0xa5, sizeof(src4k));
	/* Touch every page of the window and make it durable, so no fault is timed. */
	for (size_t p = 0; p < WINDOW; p += PAGE_SZ)
		pool[BASE + p] = 0;
	if (flush_mode)
		pmem_persist(pool + BASE, WINDOW);
	else if (pmem_msync(pool + BASE, WINDOW) != 0) {
		perror("pmem_msync");
		ret = 1;
		goto out;
	}

	if (flush_mode) {
		measure(PERSIST_64B, n);
		measure(PERSIST_4_LINES, n);
		measure(COPY_256B, n);
		measure(COPY_4KIB, n);
	} else {
		measure(MSYNC_1_PAGE, n);
	}

out:
	pmem_unmap(pool, mapped_len);
	if (unlink(path) != 0)
		fprintf(stderr, "unlink %s: %s\n", path, strerror(errno));
	return ret;
}
