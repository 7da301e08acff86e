local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
-- A compute-heavy Lua script for benches/bench_aot.py (passed with `lua -e`, so it must
-- not start with '-'): calls, integer and float loops, tables, sorting, strings.
local t = {}
for i = 1, 100000 do t[i] = (i * 7919) % 100003 end
table.sort(t)
local parts = {}
for i = 1, 20000 do parts[#parts + 1] = string.format("%d:%x", i, i * i) end
local s = table.concat(parts, ",")
local words = 0
for _ in s:gmatch("%x+") do words = words + 1 end
local h = 0
for i = 1, #s do h = (h * 31 + s:byte(i)) % 4294967296 end
local counts = {}
for i = 1, 200000 do local k = "k" .. (i % 1000); counts[k] = (counts[k] or 0) + 1 end
local acc = 0
for i = 1, 1000000 do acc = acc + (i % 7) * 0.5 end
print(fib(27), t[1000], words, h, counts.k7, acc)
