/* A qemu TCG plugin: counts a guest's executed instructions and the bytes its loads and stores
 * move, summed over all vCPUs (threads), between two markers the guest sets with the system call
 * lseek(-1, MARK, SEEK_SET) (it fails with EBADF and does nothing else). Printed at exit:
 *   "insns N load_bytes N store_bytes N"  (whole run when the guest set no two markers)
 * Build: gcc -O2 -shared -fPIC -I QEMU_SRC/include/qemu $(pkg-config --cflags glib-2.0) counts.c -o libcounts.so
 * Used by bench/arm64_layout_counts.py. */
#include <stdint.h>
#include <stdio.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARK 0x65646765ull /* "edge" */
#define LSEEK_AARCH64 62
#define LSEEK_X86_64 8

typedef struct { uint64_t insns, load_bytes, store_bytes; } Counts;
static struct qemu_plugin_scoreboard *board;
static Counts marks[2];
static int n_marks;

static Counts totals(void)
{
    Counts c = {
        qemu_plugin_u64_sum(qemu_plugin_scoreboard_u64_in_struct(board, Counts, insns)),
        qemu_plugin_u64_sum(qemu_plugin_scoreboard_u64_in_struct(board, Counts, load_bytes)),
        qemu_plugin_u64_sum(qemu_plugin_scoreboard_u64_in_struct(board, Counts, store_bytes)),
    };
    return c;
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
    Counts *c = qemu_plugin_scoreboard_find(board, vcpu);
    uint64_t bytes = 1ull << qemu_plugin_mem_size_shift(info);
    if (qemu_plugin_mem_is_store(info))
        c->store_bytes += bytes;
    else
        c->load_bytes += bytes;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
        tb, QEMU_PLUGIN_INLINE_ADD_U64, qemu_plugin_scoreboard_u64_in_struct(board, Counts, insns), n);
    for (size_t i = 0; i < n; i++)
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         QEMU_PLUGIN_MEM_RW, NULL);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if ((num == LSEEK_AARCH64 || num == LSEEK_X86_64) && a2 == MARK && n_marks < 2)
        marks[n_marks++] = totals();
}

static void at_exit_report(qemu_plugin_id_t id, void *p)
{
    Counts end = totals(), c = end;
    char line[160];
    if (n_marks == 2) {
        c.insns = marks[1].insns - marks[0].insns;
        c.load_bytes = marks[1].load_bytes - marks[0].load_bytes;
        c.store_bytes = marks[1].store_bytes - marks[0].store_bytes;
    }
    snprintf(line, sizeof line, "insns %llu load_bytes %llu store_bytes %llu\n", (unsigned long long)c.insns,
             (unsigned long long)c.load_bytes, (unsigned long long)c.store_bytes);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    board = qemu_plugin_scoreboard_new(sizeof(Counts));
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit_report, NULL);
    return 0;
}
