"""Multi-threaded Python workload for the LD_PRELOAD test: worker threads build and tear down
dicts, lists, strings and bytes, and pass objects through queues so that memory allocated on
one thread is freed on another. Prints a checksum that must not depend on the allocator."""
import hashlib
import queue
import sys
import threading

N_THREADS = 8
ROUNDS = 3000


def producer(tid, q):
    for i in range(ROUNDS):
        size = (i * 7919 + tid * 104729) % 20000
        q.put((i, bytes([(i + tid) % 251]) * size, {str(k): [k] * (k % 5) for k in range(i % 40)}))
    q.put(None)


def consumer(q, out, lock):
    h = hashlib.sha256()
    while True:
        item = q.get()
        if item is None:
            break
        i, blob, d = item
        h.update(blob)
        h.update(repr(sorted(d.items())).encode())
    with lock:
        out.append(h.hexdigest())


def churn(tid, out, lock):
    acc = []
    for i in range(20000):
        s = ("x" * (i % 300)) + str(i * tid)
        acc.append(s)
        if len(acc) > 500:
            acc = acc[250:]
    with lock:
        out.append(str(sum(len(s) for s in acc)))


def main():
    out, lock = [], threading.Lock()
    threads = []
    for t in range(N_THREADS // 2):
        q = queue.Queue(maxsize=64)
        threads.append(threading.Thread(target=producer, args=(t, q)))
        threads.append(threading.Thread(target=consumer, args=(q, out, lock)))
    threads += [threading.Thread(target=churn, args=(t, out, lock)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(hashlib.sha256("".join(sorted(out)).encode()).hexdigest())


if __name__ == "__main__":
    sys.exit(main())
