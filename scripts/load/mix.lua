-- wrk script: a mix of offload's ways through, on keep-alive connections.
--   50% pass-through files, 15% asset hits the app serves, 15% assets only in the store
--   (fallback on the app's 404), 15% HTML pages rewritten, 5% small multipart uploads.
-- Counts answers by status per thread; `done` prints the totals.

local boundary = "loadBoundary7MA4YWxkTrZu0gW"
local payload = string.rep("x", 4096)
local upload_body = "--" .. boundary .. "\r\n" ..
    "Content-Disposition: form-data; name=\"file\"; filename=\"w.bin\"\r\n" ..
    "Content-Type: application/octet-stream\r\n\r\n" .. payload .. "\r\n--" .. boundary .. "--\r\n"
local upload_headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    statuses = {}
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
    local r = math.random(100)
    local n = math.random(20)
    if r <= 50 then
        if r <= 40 then return wrk.format("GET", "/static/1k.bin") end
        return wrk.format("GET", "/static/16k.bin")
    elseif r <= 65 then
        return wrk.format("GET", "/wp-content/uploads/app-" .. n .. ".jpg")
    elseif r <= 80 then
        return wrk.format("GET", "/wp-content/uploads/store-" .. n .. ".jpg")
    elseif r <= 95 then
        return wrk.format("GET", "/index.html")
    end
    return wrk.format("POST", "/upload", upload_headers, upload_body)
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    local totals = {}
    for _, thread in ipairs(threads) do
        local s = thread:get("statuses")
        for code, count in pairs(s) do
            totals[code] = (totals[code] or 0) + count
        end
    end
    io.write("answers by status:")
    for code, count in pairs(totals) do
        io.write(string.format(" %d=%d", code, count))
    end
    io.write("\n")
    local e = summary.errors
    io.write(string.format("socket errors: connect=%d read=%d write=%d timeout=%d; non-2xx/3xx=%d\n",
        e.connect, e.read, e.write, e.timeout, e.status))
end
