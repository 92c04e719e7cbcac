/*
 * Equivalence harness for the libmnl stand-in (mnl.c). The test
 * services/netfilter/tests/mnl_equivalence.rs builds this file twice, once
 * linked with Debian's real libmnl.so and once with mnl.c, runs both and
 * requires the same output: the bytes of every message built and the
 * return value and errno of every parse and callback run, on good and on
 * malformed input. Sockets are not exercised here (they are thin syscall
 * wrappers; the netns tests and the QEMU suite run them).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <linux/netlink.h>
#include <libmnl/libmnl.h>

static void dump(const char *what, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	printf("%s %zu:", what, len);
	for (size_t i = 0; i < len; i++)
		printf("%02x", p[i]);
	printf("\n");
}

static int attr_cb(const struct nlattr *attr, void *data)
{
	int *n = data;
	(*n)++;
	printf(" attr type=%u len=%u payload=%u valid_u32=%d valid_str=%d valid_nested=%d",
	       mnl_attr_get_type(attr), mnl_attr_get_len(attr), mnl_attr_get_payload_len(attr),
	       mnl_attr_validate(attr, MNL_TYPE_U32), mnl_attr_validate(attr, MNL_TYPE_NUL_STRING),
	       mnl_attr_validate(attr, MNL_TYPE_NESTED));
	if (mnl_attr_get_type(attr) == 9)
		return MNL_CB_STOP;
	return MNL_CB_OK;
}

static int data_cb(const struct nlmsghdr *nlh, void *data)
{
	int *n = data;
	(*n)++;
	printf(" data type=%u len=%u seq=%u", nlh->nlmsg_type, nlh->nlmsg_len, nlh->nlmsg_seq);
	return nlh->nlmsg_type == 0x77 ? MNL_CB_STOP : MNL_CB_OK;
}

static size_t put_msg(char *buf, uint16_t type, uint16_t flags, uint32_t seq, uint32_t pid)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = flags;
	nlh->nlmsg_seq = seq;
	nlh->nlmsg_pid = pid;
	return nlh->nlmsg_len;
}

static size_t put_error(char *buf, int error, uint32_t seq)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct nlmsgerr *err = mnl_nlmsg_put_extra_header(nlh, sizeof(*err));
	nlh->nlmsg_type = NLMSG_ERROR;
	nlh->nlmsg_seq = seq;
	err->error = error;
	return nlh->nlmsg_len;
}

static void run(const char *what, const char *buf, size_t len, unsigned seq, unsigned pid)
{
	int n = 0;
	errno = 0;
	printf("cb_run %s:", what);
	int ret = mnl_cb_run(buf, len, seq, pid, data_cb, &n);
	printf(" -> ret=%d errno=%d calls=%d\n", ret, ret < 0 ? errno : 0, n);
}

int main(void)
{
	char buf[4096] __attribute__((aligned(4)));
	char stream[4096] __attribute__((aligned(4)));
	size_t off;

	/* building: header, extra header, every attribute kind, nests. The
	 * buffer starts zeroed: libmnl 1.0.4 leaves attribute padding as it
	 * finds it, the stand-in zeroes it (no stale bytes reach the kernel). */
	memset(buf, 0, sizeof(buf));
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = 0x0a01;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = 42;
	unsigned char *extra = mnl_nlmsg_put_extra_header(nlh, 3);
	extra[0] = 1;
	mnl_attr_put_u8(nlh, 1, 0x11);
	mnl_attr_put_u16(nlh, 2, 0x2222);
	mnl_attr_put_u32(nlh, 3, 0x33333333);
	mnl_attr_put_u64(nlh, 4, 0x4444444444444444ULL);
	mnl_attr_put_str(nlh, 5, "abc");
	mnl_attr_put_strz(nlh, 6, "defgh");
	mnl_attr_put(nlh, 7, 5, "\x01\x02\x03\x04\x05");
	struct nlattr *nest = mnl_attr_nest_start(nlh, 8);
	mnl_attr_put_u32(nlh, 1, 7);
	mnl_attr_put_strz(nlh, 2, "in");
	mnl_attr_nest_end(nlh, nest);
	struct nlattr *cancelled = mnl_attr_nest_start(nlh, 10);
	mnl_attr_put_u32(nlh, 1, 9);
	mnl_attr_nest_cancel(nlh, cancelled);
	mnl_attr_put_u32(nlh, 9, 99);
	mnl_attr_put_u32(nlh, 11, 111);
	dump("built", buf, nlh->nlmsg_len);
	printf("payload_len=%zu size(7)=%zu\n", mnl_nlmsg_get_payload_len(nlh), mnl_nlmsg_size(7));

	/* parsing: every attribute, a callback that stops, nested, a bad offset */
	int n = 0;
	printf("parse:");
	int ret = mnl_attr_parse(nlh, 4, attr_cb, &n);
	printf(" -> %d (%d attrs)\n", ret, n);
	n = 0;
	printf("parse_nested:");
	ret = mnl_attr_parse_nested(nest, attr_cb, &n);
	printf(" -> %d (%d attrs)\n", ret, n);
	printf("u8=%x u16=%x u32=%x u64=%llx str=%s\n",
	       mnl_attr_get_u8((struct nlattr *)((char *)nlh + 20)),
	       mnl_attr_get_u16((struct nlattr *)((char *)nlh + 28)),
	       mnl_attr_get_u32((struct nlattr *)((char *)nlh + 36)),
	       (unsigned long long)mnl_attr_get_u64((struct nlattr *)((char *)nlh + 44)),
	       mnl_attr_get_str((struct nlattr *)((char *)nlh + 56)));
	/* an attribute whose length runs past the message (type 9, before the last) */
	struct nlattr *last = (struct nlattr *)((char *)nlh + nlh->nlmsg_len - 16);
	last->nla_len = 200;
	n = 0;
	errno = 0;
	printf("parse overrun:");
	ret = mnl_attr_parse(nlh, 4, attr_cb, &n);
	printf(" -> %d errno=%d (%d attrs)\n", ret, ret < 0 ? errno : 0, n);
	struct nlattr short_attr = {.nla_len = 6, .nla_type = 1};
	errno = 0;
	ret = mnl_attr_validate(&short_attr, MNL_TYPE_U32);
	printf("validate short u32 -> %d errno=%d\n", ret, ret < 0 ? errno : 0);
	errno = 0;
	ret = mnl_attr_validate2(&short_attr, MNL_TYPE_BINARY, 4);
	printf("validate2 binary 4 -> %d errno=%d\n", ret, ret < 0 ? errno : 0);
	errno = 0;
	ret = mnl_attr_type_valid(&short_attr, 0);
	printf("type_valid max 0 -> %d errno=%d\n", ret, ret < 0 ? errno : 0);

	/* batches: fill past the limit, the overflowing message moves to the front on reset */
	memset(buf, 0, sizeof(buf));
	struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(buf, 64);
	printf("batch empty=%d\n", mnl_nlmsg_batch_is_empty(b));
	for (int i = 0; i < 5; i++) {
		struct nlmsghdr *m = mnl_nlmsg_put_header(mnl_nlmsg_batch_current(b));
		m->nlmsg_type = 0x100 + i;
		mnl_attr_put_u32(m, 1, i);
		bool more = mnl_nlmsg_batch_next(b);
		printf("batch next %d -> %d size=%zu\n", i, more, mnl_nlmsg_batch_size(b));
		if (!more) {
			dump("batch", mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b));
			mnl_nlmsg_batch_reset(b);
			printf("batch reset size=%zu\n", mnl_nlmsg_batch_size(b));
		}
	}
	dump("batch tail", mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b));
	mnl_nlmsg_batch_stop(b);

	/* the callback runner over replies a kernel sends */
	off = 0;
	off += put_msg(stream + off, 0x10, 0, 7, 0);
	off += put_msg(stream + off, 0x11, 0, 7, 0);
	off += put_msg(stream + off, NLMSG_DONE, 0, 7, 0);
	off += put_msg(stream + off, 0x12, 0, 7, 0);
	run("data then done", stream, off, 7, 0);
	run("seq mismatch", stream, off, 8, 0);
	run("seq 0 skips the check", stream, off, 0, 0);
	off = put_msg(stream, 0x10, 0, 7, 99);
	run("portid mismatch", stream, off, 7, 98);
	run("portid ok", stream, off, 7, 99);
	off = put_error(stream, 0, 7);
	off += put_error(stream + off, -EEXIST, 7);
	run("ack then error", stream, off, 7, 0);
	off = put_error(stream, -ENOENT, 7);
	run("error", stream, off, 7, 0);
	off = put_msg(stream, NLMSG_NOOP, 0, 7, 0);
	off += put_msg(stream + off, 0x77, 0, 7, 0);
	off += put_msg(stream + off, 0x10, 0, 7, 0);
	run("noop then stop", stream, off, 7, 0);
	off = put_msg(stream, NLMSG_OVERRUN, 0, 7, 0);
	run("overrun", stream, off, 7, 0);
	off = put_msg(stream, 0x10, 0, 7, 0);
	run("truncated", stream, off - 4, 7, 0);
	((struct nlmsghdr *)stream)->nlmsg_len = 8;
	run("length below header", stream, off, 7, 0);
	off = put_msg(stream, 0x10, NLM_F_DUMP_INTR, 7, 0);
	run("dump interrupted", stream, off, 7, 0);
	off = put_msg(stream, 0x10, 0, 7, 0);
	n = 0;
	errno = 0;
	ret = mnl_cb_run(stream, off, 7, 0, NULL, &n);
	printf("cb_run no callback -> %d errno=%d\n", ret, ret < 0 ? errno : 0);

	/* walking messages */
	off = put_msg(stream, 1, 0, 1, 0);
	off += put_msg(stream + off, 2, 0, 2, 0);
	int len = (int)off;
	for (struct nlmsghdr *m = (struct nlmsghdr *)stream; mnl_nlmsg_ok(m, len);
	     m = mnl_nlmsg_next(m, &len))
		printf("walk type=%u seq_ok(2)=%d portid_ok(0)=%d left=%d\n", m->nlmsg_type,
		       mnl_nlmsg_seq_ok(m, 2), mnl_nlmsg_portid_ok(m, 0), len);
	return 0;
}
