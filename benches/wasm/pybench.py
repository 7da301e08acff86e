# A pure-Python workload for benches/bench_aot.py, run as `python -c` by CPython for
# WASI: calls, integer loops, dicts, strings, a class.
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


s = 0
for i in range(200000):
    s += i * i % 7
d = {}
for i in range(50000):
    d[str(i)] = i
words = " ".join(str(i) for i in range(30000)).split()
pts = sum(Point(i, -i).norm2() for i in range(30000))
print(fib(20), s, len(d), len(words), pts)
