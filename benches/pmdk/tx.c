/*
 * PMDK (libpmemobj) peer of pmstore's transaction workloads.
 *
 *   pmdk_tx POOL_PATH WORKLOAD [N]
 *
 * Creates a fresh 64 MiB pmemobj pool at POOL_PATH (which must not exist), runs WORKLOAD N
 * times (default 200000) after an untimed warm-up of N/10, removes the pool and prints one
 * JSON line:
 *
 *   {"lib":"pmdk","workload":"...","mode":"flush"|"msync","n":N,"ns_per_op":X}
 *
 * mode is "flush" when PMEM_IS_PMEM_FORCE=1 is set (libpmem then treats the mapping as pmem
 * and persists with cache-line flushes + sfence; use a path on /dev/shm), else "msync" (libpmem
 * persists with msync; use a path on a real file system such as /var/tmp).
 *
 * Workloads (the Rust side implements the same ones):
 *   tx_update_8B       a 64-byte-aligned counter inside the root object; per op one
 *                      transaction: pmemobj_tx_add_range(root, off, 8); counter++.
 *   tx_update_256B     one 256-byte, 64-byte-aligned object (4 cache lines; allocated from a
 *                      custom header-less allocation class with 64-byte alignment); per op one
 *                      transaction adding the 256-byte range and incrementing all 32 words.
 *   tx_update_4x64B    four separate 64-byte, 64-byte-aligned objects (custom class, allocated
 *                      before timing); per op one transaction adding 64 B of each of the four
 *                      and incrementing all 8 words of each.
 *   tx_alloc_free      per op (a PAIR of transactions): tx 1 adds the root slot and stores
 *                      pmemobj_tx_alloc(64) into it; tx 2 adds the slot, pmemobj_tx_free()s
 *                      the object and clears the slot.  ns_per_op is per pair.
 *   atomic_alloc_free  per op: pmemobj_alloc(64) into the root slot, then pmemobj_free() of it
 *                      (as benches/pmdk/alloc.c).  ns_per_op is per pair.
 * In the two alloc workloads one extra 64-byte block stays allocated, as in alloc.c.
 *
 * Any PMDK error aborts with a message and exit status 1.
 *
 * Build: cc -O2 -Wall -Wextra -o target/pmdk_tx benches/pmdk/tx.c -lpmemobj
 */
#include <libpmemobj.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE ((size_t)64 << 20)
#define LINE 64

struct root {
	PMEMoid slot;      /* alloc workloads: the object being allocated and freed */
	PMEMoid keep;      /* alloc workloads: one block that stays allocated */
	PMEMoid obj256;    /* tx_update_256B */
	PMEMoid obj64[4];  /* tx_update_4x64B */
	char area[2 * LINE]; /* tx_update_8B: the counter sits at the first 64-aligned byte */
};

static PMEMobjpool *pop;
static PMEMoid root_oid;
static struct root *r;

static void die(const char *what)
{
	const char *msg = pmemobj_errormsg();
	fprintf(stderr, "pmdk_tx: %s failed: %s\n", what, msg && *msg ? msg : "(no message)");
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A header-less allocation class of UNIT-byte objects aligned to 64 bytes. */
static unsigned aligned_class(size_t unit)
{
	struct pobj_alloc_class_desc d = {
		.unit_size = unit,
		.alignment = LINE,
		.units_per_block = 1024,
		.header_type = POBJ_HEADER_NONE,
	};
	if (pmemobj_ctl_set(pop, "heap.alloc_class.new.desc", &d) != 0)
		die("pmemobj_ctl_set(heap.alloc_class.new.desc)");
	return d.class_id;
}

static void aligned_alloc_obj(PMEMoid *oidp, size_t size, unsigned class_id)
{
	if (pmemobj_xalloc(pop, oidp, size, 0, POBJ_CLASS_ID(class_id), NULL, NULL) != 0)
		die("pmemobj_xalloc");
	if (((uintptr_t)pmemobj_direct(*oidp) & (LINE - 1)) != 0) {
		fprintf(stderr, "pmdk_tx: object not 64-byte aligned\n");
		exit(1);
	}
}

/* ---- tx_update_8B ---- */
static size_t ctr_off;

static void setup_8B(void)
{
	uintptr_t a = (uintptr_t)r->area;
	ctr_off = offsetof(struct root, area) + ((LINE - (a & (LINE - 1))) & (LINE - 1));
}

static void op_8B(void)
{
	uint64_t *ctr = (uint64_t *)((char *)r + ctr_off);
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(root_oid, ctr_off, 8) != 0)
			pmemobj_tx_abort(-1);
		(*ctr)++;
	} TX_ONABORT {
		die("tx_update_8B transaction");
	} TX_END
}

static int check_8B(long total)
{
	return *(uint64_t *)((char *)r + ctr_off) == (uint64_t)total;
}

/* ---- tx_update_256B ---- */
static void setup_256B(void)
{
	aligned_alloc_obj(&r->obj256, 256, aligned_class(256));
	pmemobj_persist(pop, &r->obj256, sizeof(r->obj256));
}

static void op_256B(void)
{
	uint64_t *w = pmemobj_direct(r->obj256);
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(r->obj256, 0, 256) != 0)
			pmemobj_tx_abort(-1);
		for (int k = 0; k < 32; k++)
			w[k]++;
	} TX_ONABORT {
		die("tx_update_256B transaction");
	} TX_END
}

static int check_256B(long total)
{
	uint64_t *w = pmemobj_direct(r->obj256);
	for (int k = 0; k < 32; k++)
		if (w[k] != (uint64_t)total)
			return 0;
	return 1;
}

/* ---- tx_update_4x64B ---- */
static uint64_t *obj64p[4];

static void setup_4x64B(void)
{
	unsigned cls = aligned_class(64);
	for (int j = 0; j < 4; j++) {
		aligned_alloc_obj(&r->obj64[j], 64, cls);
		obj64p[j] = pmemobj_direct(r->obj64[j]);
	}
	pmemobj_persist(pop, r->obj64, sizeof(r->obj64));
}

static void op_4x64B(void)
{
	TX_BEGIN(pop) {
		for (int j = 0; j < 4; j++) {
			if (pmemobj_tx_add_range(r->obj64[j], 0, 64) != 0)
				pmemobj_tx_abort(-1);
			for (int k = 0; k < 8; k++)
				obj64p[j][k]++;
		}
	} TX_ONABORT {
		die("tx_update_4x64B transaction");
	} TX_END
}

static int check_4x64B(long total)
{
	for (int j = 0; j < 4; j++)
		for (int k = 0; k < 8; k++)
			if (obj64p[j][k] != (uint64_t)total)
				return 0;
	return 1;
}

/* ---- tx_alloc_free / atomic_alloc_free ---- */
static void setup_alloc(void)
{
	if (pmemobj_alloc(pop, &r->keep, 64, 0, NULL, NULL) != 0)
		die("pmemobj_alloc(keep)");
}

static void op_tx_alloc_free(void)
{
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(root_oid, offsetof(struct root, slot), sizeof(PMEMoid)) != 0)
			pmemobj_tx_abort(-1);
		r->slot = pmemobj_tx_alloc(64, 0);
	} TX_ONABORT {
		die("tx_alloc_free: alloc transaction");
	} TX_END
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(root_oid, offsetof(struct root, slot), sizeof(PMEMoid)) != 0)
			pmemobj_tx_abort(-1);
		if (pmemobj_tx_free(r->slot) != 0)
			pmemobj_tx_abort(-1);
		r->slot = OID_NULL;
	} TX_ONABORT {
		die("tx_alloc_free: free transaction");
	} TX_END
}

static void op_atomic_alloc_free(void)
{
	if (pmemobj_alloc(pop, &r->slot, 64, 0, NULL, NULL) != 0)
		die("pmemobj_alloc");
	pmemobj_free(&r->slot);
}

static int check_alloc(long total)
{
	(void)total;
	return OID_IS_NULL(r->slot) && !OID_IS_NULL(r->keep);
}

static const struct workload {
	const char *name;
	void (*setup)(void);
	void (*op)(void);
	int (*check)(long total);
} workloads[] = {
	{ "tx_update_8B", setup_8B, op_8B, check_8B },
	{ "tx_update_256B", setup_256B, op_256B, check_256B },
	{ "tx_update_4x64B", setup_4x64B, op_4x64B, check_4x64B },
	{ "tx_alloc_free", setup_alloc, op_tx_alloc_free, check_alloc },
	{ "atomic_alloc_free", setup_alloc, op_atomic_alloc_free, check_alloc },
};

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s POOL_PATH WORKLOAD [N]\nworkloads:", argv[0]);
		for (size_t i = 0; i < sizeof(workloads) / sizeof(workloads[0]); i++)
			fprintf(stderr, " %s", workloads[i].name);
		fprintf(stderr, "\n");
		return 2;
	}
	const struct workload *w = NULL;
	for (size_t i = 0; i < sizeof(workloads) / sizeof(workloads[0]); i++)
		if (strcmp(argv[2], workloads[i].name) == 0)
			w = &workloads[i];
	if (w == NULL) {
		fprintf(stderr, "pmdk_tx: unknown workload %s\n", argv[2]);
		return 2;
	}
	long n = argc > 3 ? atol(argv[3]) : 200000;
	if (n <= 0) {
		fprintf(stderr, "pmdk_tx: N must be positive\n");
		return 2;
	}
	const char *force = getenv("PMEM_IS_PMEM_FORCE");
	const char *mode = force && strcmp(force, "1") == 0 ? "flush" : "msync";

	pop = pmemobj_create(argv[1], "pmdk-tx-bench", POOL_SIZE, 0600);
	if (pop == NULL)
		die("pmemobj_create");
	root_oid = pmemobj_root(pop, sizeof(struct root));
	if (OID_IS_NULL(root_oid))
		die("pmemobj_root");
	r = pmemobj_direct(root_oid);

	w->setup();
	long warm = n / 10;
	for (long i = 0; i < warm; i++)
		w->op();
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++)
		w->op();
	uint64_t t1 = now_ns();
	if (!w->check(warm + n)) {
		fprintf(stderr, "pmdk_tx: %s: final state check failed\n", w->name);
		return 1;
	}

	pmemobj_close(pop);
	unlink(argv[1]);
	printf("{\"lib\":\"pmdk\",\"workload\":\"%s\",\"mode\":\"%s\",\"n\":%ld,\"ns_per_op\":%.1f}\n",
	       w->name, mode, n, (double)(t1 - t0) / (double)n);
	return 0;
}
