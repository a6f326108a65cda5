import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Helpers for integration tests: real PostgreSQL 15 clusters on free loopback ports, real walship
/// processes, waits with deadlines, and cleanup that also runs when a test fails.

enum IT {
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        url.deleteLastPathComponent()
        url.deleteLastPathComponent()
        return url.path
    }()

    /// The walship under test, copied to a 0755 location outside the checkout: the receiver and
    /// restore_command run as the postgres OS user, who may not be able to enter the checkout (a clone under
    /// /root, say). This is what `make install` gives a real DR host.
    static let walshipBinary: String = {
        if let path = ProcessInfo.processInfo.environment["WALSHIP_BIN"] { return path }
        let built = repositoryRoot + "/.build/debug/walship"
        let directory = "/tmp/walship-it-bin-\(getpid())"
        let installed = directory + "/walship"
        // Written with O_CLOEXEC: a process spawned meanwhile by a parallel test must not inherit the write
        // descriptor, or exec of the copy fails with "Text file busy" for as long as that process lives.
        guard
            (try? FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o755])) != nil,
            let bytes = FileManager.default.contents(atPath: built)
        else { return built }
        let fd = open(installed, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard fd >= 0 else { return built }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        chmod(installed, 0o755)
        return written == bytes.count ? installed : built
    }()

    static let pgBin: String? = {
        if let path = ProcessInfo.processInfo.environment["PG_BINDIR"] { return path }
        for candidate in ["/usr/lib/postgresql/15/bin"] where FileManager.default.fileExists(atPath: candidate + "/initdb") {
            return candidate
        }
        return nil
    }()

    static var isRoot: Bool { getuid() == 0 }

    /// Where logs of a test run go; kept after the run for diagnosis.
    static let outputRoot: String = {
        let path = repositoryRoot + "/test-output"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    /// Whether a socket listens on `port` (IPv4), from /proc/net/tcp: without connecting, which a proxy would pass
    /// on to its target as a connection that ends at once.
    static func listening(port: Int) -> Bool {
        let table = (try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)) ?? ""
        let local = String(format: ":%04X", port)
        return table.split(separator: "\n").dropFirst().contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1].hasSuffix(local) && fields[3] == "0A"  // TCP_LISTEN
        }
    }

    /// A loopback port nothing listens on, below Linux's ephemeral range (32768 on), where outgoing connections
    /// (libpq, HTTP) take their local ports: one of those could take a port handed out from there before the
    /// server binds it (seen: a receiver's --standby-listen in use). Below the test store's range too
    /// (scripts/s3-server.sh: 20000-32000), and never the same port twice in one run.
    static func freePort() -> Int {
        for _ in 0..<2000 {
            let port = Int.random(in: 10000..<20000)
            guard portsHandedOut.withLock({ $0.insert(port).inserted }), canBind(port) else { continue }
            return port
        }
        fatalError("no free loopback port between 10000 and 20000")
    }

    private static let portsHandedOut = LockedValue(Set<Int>())

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        } == 0
    }
}

/// A value behind a lock, for test support shared by tests that run in parallel.
final class LockedValue<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()

    init(_ value: Value) { self.value = value }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

struct CommandResult {
    var status: Int32
    var output: String
    var error: String
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process started with posix_spawn; reaped with waitpid, so its state is always exact.
final class Child {
    let pid: pid_t
    private(set) var exitStatus: Int32?

    init(
        _ executable: String, _ arguments: [String], stdout: String, stderr: String,
        environment: [String: String] = [:]
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        // The test runner's threads block signals; a child must start with none blocked and default
        // handlers, or pgbench -T never sees its SIGALRM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw TestFailure("cannot start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let rc = waitpid(pid, &status, WNOHANG)
        if rc == pid {
            // WIFEXITED ? WEXITSTATUS : 128 + signal
            exitStatus = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
            return false
        }
        return rc == 0
    }

    /// Waits up to `timeout` seconds; true when the process has exited.
    func wait(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning {
            if Date() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    func signal(_ signal: Int32) { if isRunning { kill(pid, signal) } }
}

/// Runs a command to completion (with a hard timeout) and captures its output.
@discardableResult
func run(
    _ executable: String, _ arguments: [String], asPostgres: Bool = false, timeout: Double = 120,
    environment: [String: String] = [:], check: Bool = true
) throws -> CommandResult {
    var executable = executable
    var arguments = arguments
    if asPostgres && IT.isRoot {
        arguments = ["-u", "postgres", "--", executable] + arguments
        executable = "/usr/sbin/runuser"
    }
    // Output goes to files, not pipes: a daemon started by the command (pg_ctl start) would keep a pipe open.
    let outPath = NSTemporaryDirectory() + "walship-it-\(UUID().uuidString).out"
    let errPath = outPath + ".err"
    defer {
        unlink(outPath)
        unlink(errPath)
    }
    let child = try Child(executable, arguments, stdout: outPath, stderr: errPath, environment: environment)
    if !child.wait(timeout: timeout) {
        child.signal(SIGKILL)
        _ = child.wait(timeout: 10)
        throw TestFailure("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
    }
    let result = CommandResult(
        status: child.exitStatus ?? -1,
        output: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
        error: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    if check && result.status != 0 {
        throw TestFailure(
            "\(executable) \(arguments.joined(separator: " ")) exited \(result.status): \(result.error)\(result.output)")
    }
    return result
}

/// Polls `probe` every 100 ms until it returns true; fails with `what` and the last observation at the deadline.
func waitUntil(_ what: String, timeout: Double = 60, _ probe: () throws -> (Bool, String)) throws {
    let deadline = Date().addingTimeInterval(timeout)
    var last = ""
    while Date() < deadline {
        do {
            let (done, observed) = try probe()
            if done { return }
            last = observed
        } catch {
            last = "\(error)"
        }
        usleep(100_000)
    }
    throw TestFailure("timed out after \(timeout) s waiting for \(what); last observed: \(last)")
}

/// A long-running process (walship, pgbench) with its output in a log file.
final class Daemon {
    let name: String
    let child: Child
    let logPath: String

    init(name: String, executable: String, arguments: [String], logDirectory: String, environment: [String: String] = [:]) throws
    {
        self.name = name
        logPath = logDirectory + "/\(name).log"
        child = try Child(executable, arguments, stdout: logPath, stderr: logPath, environment: environment)
    }

    var isRunning: Bool { child.isRunning }
    var exitStatus: Int32? { child.exitStatus }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill9() {
        child.signal(SIGKILL)
        _ = child.wait(timeout: 10)
    }

    func stop() {
        child.signal(SIGTERM)
        if !child.wait(timeout: 5) { kill9() }
    }

    /// Sends `signal` (SIGTERM, SIGINT) without waiting.
    func signal(_ signal: Int32) { child.signal(signal) }

    /// Waits up to `timeout` seconds for the process to exit; its exit status (128 + N after signal N), or nil
    /// while it still runs.
    func waitForExit(timeout: Double) -> Int32? { child.wait(timeout: timeout) ? child.exitStatus : nil }
}

/// A PostgreSQL 15 cluster owned by one test.
final class Cluster {
    let name: String
    let dataDirectory: String
    let port: Int
    let socketDirectory: String
    let bin: String
    private(set) var running = false

    /// A data directory made by someone else (pg_basebackup), configured by the test.
    init(name: String, dataDirectory: String, port: Int, socketDirectory: String) throws {
        guard let bin = IT.pgBin else { throw TestFailure("PostgreSQL 15 server binaries not found") }
        self.bin = bin
        self.name = name
        self.dataDirectory = dataDirectory
        self.port = port
        self.socketDirectory = socketDirectory
    }

    init(name: String, in directory: String, settings: [String: String] = [:]) throws {
        guard let bin = IT.pgBin else {
            throw TestFailure("PostgreSQL 15 server binaries not found (install postgresql-15 or set PG_BINDIR)")
        }
        self.bin = bin
        self.name = name
        dataDirectory = directory + "/" + name
        socketDirectory = directory
        port = IT.freePort()
        try run(
            bin + "/initdb", ["-D", dataDirectory, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            asPostgres: true)
        var conf = [
            "port": "\(port)", "listen_addresses": "'127.0.0.1'", "unix_socket_directories": "'\(socketDirectory)'",
            "wal_level": "replica", "max_wal_senders": "10", "fsync": "on", "shared_buffers": "32MB",
            "wal_sender_timeout": "'20s'",
        ]
        conf.merge(settings) { $1 }
        let text = conf.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)" }.joined(separator: "\n") + "\n"
        let handle = FileHandle(forWritingAtPath: dataDirectory + "/postgresql.conf")!
        handle.seekToEndOfFile()
        handle.write(Data(text.utf8))
        handle.closeFile()
    }

    func start() throws {
        try run(
            bin + "/pg_ctl", ["-D", dataDirectory, "-l", dataDirectory + "/server.log", "-w", "-t", "60", "start"],
            asPostgres: true)
        running = true
    }

    /// A clean restart (`-m fast`), as a DBA's maintenance would do.
    func restart() throws {
        try run(
            bin + "/pg_ctl",
            [
                "-D", dataDirectory, "-l", dataDirectory + "/server.log", "-m", "fast", "-w", "-t", "60",
                "restart",
            ], asPostgres: true, timeout: 120)
    }

    /// Stops immediately (crash-like); safe to call twice.
    func stopImmediately() {
        guard running || FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") else { return }
        _ = try? run(
            bin + "/pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "stop"], asPostgres: true,
            timeout: 60, check: false)
        running = false
    }

    var conninfo: String { "host=127.0.0.1 port=\(port) user=postgres" }

    /// Runs SQL through psql and returns the unaligned, tuples-only output.
    @discardableResult
    func sql(_ statement: String, timeout: Double = 60) throws -> String {
        let r = try run(
            "/usr/bin/psql",
            [
                "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres",
                "-AtX", "-v", "ON_ERROR_STOP=1", "-c", statement,
            ], timeout: timeout)
        return r.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func pgbench(_ arguments: [String], timeout: Double = 300) throws {
        try run(
            bin + "/pgbench", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres"] + arguments + ["postgres"],
            timeout: timeout)
    }
}

/// Everything one test starts, torn down in reverse order whatever happens.
final class Fixture {
    let directory: String
    let logDirectory: String
    private var clusters: [Cluster] = []
    private var daemons: [Daemon] = []

    init(_ testName: String) throws {
        directory = "/tmp/walship-it-\(testName)-\(getpid())"
        logDirectory = IT.outputRoot + "/\(testName)"
        _ = try? run("/bin/rm", ["-rf", directory, logDirectory])
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        if IT.isRoot { try run("/bin/chown", ["postgres:postgres", directory]) }
    }

    func cluster(_ name: String, settings: [String: String] = [:]) throws -> Cluster {
        let c = try Cluster(name: name, in: directory, settings: settings)
        clusters.append(c)
        return c
    }

    /// A base backup of `primary` into `name`, without WAL, so the spool is the only WAL source.
    func baseBackup(of primary: Cluster, name: String) throws {
        try run(
            primary.bin + "/pg_basebackup",
            [
                "-h", "127.0.0.1", "-p", "\(primary.port)", "-U", "postgres",
                "-D", directory + "/" + name, "-X", "none", "-c", "fast", "--no-sync",
            ],
            asPostgres: true)
    }

    /// Configures the copy made by `baseBackup` (its own port, `settings`, the given signal file) and starts it.
    func startCopy(name: String, signal: String, settings: [String]) throws -> Cluster {
        let data = directory + "/" + name
        let port = IT.freePort()
        let conf =
            [
                "port = \(port)", "listen_addresses = '127.0.0.1'", "unix_socket_directories = '\(directory)'",
                "archive_mode = off",
            ] + settings
        let handle = FileHandle(forWritingAtPath: data + "/postgresql.conf")!
        handle.seekToEndOfFile()
        handle.write(Data(("\n" + conf.joined(separator: "\n") + "\n").utf8))
        handle.closeFile()
        try run("/usr/bin/touch", [data + "/" + signal], asPostgres: true)
        let c = try adoptCluster(name: name, dataDirectory: data, port: port)
        try c.start()
        return c
    }

    func adoptCluster(name: String, dataDirectory: String, port: Int) throws -> Cluster {
        let c = try Cluster(name: name, dataDirectory: dataDirectory, port: port, socketDirectory: directory)
        clusters.append(c)
        return c
    }

    /// A directory the postgres OS user can write (for archive_command).
    func postgresDirectory(_ name: String) throws -> String {
        let path = directory + "/" + name
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        if IT.isRoot { try run("/bin/chown", ["postgres:postgres", path]) }
        return path
    }

    func walship(_ name: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Daemon {
        let d = try Daemon(
            name: name, executable: IT.walshipBinary, arguments: arguments, logDirectory: logDirectory,
            environment: environment)
        daemons.append(d)
        return d
    }

    func daemon(_ name: String, _ executable: String, _ arguments: [String]) throws -> Daemon {
        let d = try Daemon(name: name, executable: executable, arguments: arguments, logDirectory: logDirectory)
        daemons.append(d)
        return d
    }

    /// A WAN-like link to `target` (scripts/wan-proxy.py: `mbit` each way, 5 ms delay, a short queue so that a
    /// socket writing into it is taken at the link's pace); returns the port to connect to once it listens.
    func slowLink(to target: Int, mbit: Int = 16) throws -> Int {
        let port = IT.freePort()
        let proxy = try daemon(
            "wan-proxy", "/usr/bin/python3",
            [
                IT.repositoryRoot + "/scripts/wan-proxy.py", "\(port)", "\(target)",
                "--delay-ms", "5", "--mbit", "\(mbit)", "--queue-kib", "256",
            ])
        try waitUntil("the WAN proxy to listen on \(port)", timeout: 30) { (IT.listening(port: port), proxy.log) }
        return port
    }

    /// Copies server logs next to the walship logs, then stops everything and removes the data.
    func tearDown() {
        for d in daemons.reversed() { d.stop() }
        for c in clusters.reversed() {
            c.stopImmediately()
            _ = try? run("/bin/cp", [c.dataDirectory + "/server.log", logDirectory + "/\(c.name)-server.log"], check: false)
        }
        _ = try? run("/bin/rm", ["-rf", directory], check: false)
    }
}

/// Reads a JSON status document from a walship `--status-listen` endpoint.
func fetchStatus(port: Int) throws -> [String: Any] {
    let r = try run("/usr/bin/curl", ["-sf", "--max-time", "5", "http://127.0.0.1:\(port)/status"], timeout: 10)
    guard let object = try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any] else {
        throw TestFailure("status is not a JSON object: \(r.output)")
    }
    return object
}

/// The LSN of `stage` ("primary", "sent", "received", "durable", "replayed") in a status system entry.
func stageLSN(_ system: [String: Any]?, _ stage: String) -> UInt64? {
    let chain = system?["chain"] as? [[String: Any]] ?? []
    return (chain.first { $0["name"] as? String == stage }?["lsn"] as? String).flatMap(lsn)
}

/// Parses `X/X`.
func lsn(_ text: String) -> UInt64? {
    let parts = text.split(separator: "/")
    guard parts.count == 2, let hi = UInt64(parts[0], radix: 16), let lo = UInt64(parts[1], radix: 16) else { return nil }
    return hi << 32 | lo
}

/// A steady writer: inserts ids 1, 2, 3… into `table` (id int PRIMARY KEY) one transaction at a time and
/// appends "id LSN" to `file` only after its COMMIT returned, i.e. was acknowledged to the client. The LSN is
/// the primary's insert position after the row, read in the same transaction: just before its commit record.
func startAcknowledgedWriter(
    _ fixture: Fixture, primary: Cluster, table: String, file: String, from first: Int = 1
) throws -> Daemon {
    try fixture.daemon(
        "writer", "/bin/bash",
        [
            "-c",
            """
            for i in $(seq \(first) 10000000); do
              lsn=$(psql -h 127.0.0.1 -p \(primary.port) -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 \\
                -c "INSERT INTO \(table) (id) VALUES ($i); SELECT pg_current_wal_insert_lsn()" 2>/dev/null) \\
                && echo "$i $lsn" >> \(file) || sleep 0.05
            done
            """,
        ])
}

/// Load for the fault drills: `sessions` concurrent sessions committing as fast as the primary acknowledges (hundreds
/// a second), recording to `file` exactly as `startAcknowledgedWriter` does; ids are unique but, across sessions, not
/// in commit order. The sessions reconnect by themselves after a crash of the primary (scripts/acknowledged-writer.py).
func startAcknowledgedLoad(
    _ fixture: Fixture, primary: Cluster, table: String, file: String, sessions: Int = 8
)
    throws -> Daemon
{
    try fixture.daemon(
        "load-writer", "/usr/bin/python3",
        [
            IT.repositoryRoot + "/scripts/acknowledged-writer.py",
            "\(primary.port)", table, file, "--sessions", "\(sessions)",
        ])
}

/// The commits `startAcknowledgedWriter` recorded: id and the insert position just before its commit record.
func acknowledgedCommits(_ file: String) -> [(id: Int, lsn: UInt64)] {
    ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
        let fields = line.split(separator: " ")
        guard fields.count == 2, let id = Int(fields[0]), let position = lsn(String(fields[1])) else { return nil }
        return (id, position)
    }
}

/// How many commits the writer recorded in `file` (its complete lines), reading only what was appended since the
/// last count. The fault drill's file grows to tens of MB; parsing it whole at every poll made each round slower
/// than the one before, until the harness, not walship, took most of the host.
func acknowledgedCount(_ file: String) -> Int { AcknowledgedCounter.shared.count(file) }

final class AcknowledgedCounter: @unchecked Sendable {
    static let shared = AcknowledgedCounter()
    private let lock = NSLock()
    private var counted: [String: (offset: UInt64, lines: Int)] = [:]

    func count(_ file: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        var (offset, lines) = counted[file] ?? (0, 0)
        guard let handle = FileHandle(forReadingAtPath: file) else { return lines }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        if size < offset { (offset, lines) = (0, 0) }  // a new file under the same name
        guard size > offset else { return lines }
        try? handle.seek(toOffset: offset)
        let data = (try? handle.read(upToCount: Int(size - offset))) ?? Data()
        // Only up to the last newline: a line still being written is counted once it is whole.
        let whole = data.withUnsafeBytes { raw -> (lines: Int, bytes: Int) in
            guard let base = raw.baseAddress else { return (0, 0) }
            var found = 0
            var end = 0
            var at = 0
            while at < raw.count, let hit = memchr(base + at, 0x0A, raw.count - at) {
                at = base.distance(to: UnsafeRawPointer(hit)) + 1
                found += 1
                end = at
            }
            return (found, end)
        }
        counted[file] = (offset + UInt64(whole.bytes), lines + whole.lines)
        return lines + whole.lines
    }
}

/// Waits until the writer recording to `file` has acknowledged `more` commits beyond those it had; returns
/// the seconds that took. `log` is shown when the deadline passes.
@discardableResult
func waitForMoreCommits(_ more: Int, in file: String, _ what: String, timeout: Double, log: () -> String) throws -> Double {
    let start = Date()
    let before = acknowledgedCount(file)
    try waitUntil(what, timeout: timeout) {
        let now = acknowledgedCount(file)
        return (now >= before + more, "\(now - before) new commits; \(log())")
    }
    return Date().timeIntervalSince(start)
}

/// The ids `startAcknowledgedWriter` recorded.
func acknowledgedIDs(_ file: String) -> [Int] { acknowledgedCommits(file).map(\.id) }

/// The three TLS options of one end ("receiver" or "sender") for a set made by `walship certs init DIRECTORY`.
func tlsArguments(_ directory: String, _ end: String) -> [String] {
    ["--tls-cert", "\(directory)/\(end).crt", "--tls-key", "\(directory)/\(end).key", "--tls-ca", "\(directory)/ca.crt"]
}

/// The postmaster's process ID, from its data directory.
func postmasterPID(of cluster: Cluster) throws -> Int32 {
    let text = try String(contentsOfFile: cluster.dataDirectory + "/postmaster.pid", encoding: .utf8)
    guard let pid = text.split(separator: "\n").first.flatMap({ Int32($0) }) else {
        throw TestFailure("no postmaster pid in \(cluster.dataDirectory)/postmaster.pid")
    }
    return pid
}

/// The receiver's promotion readiness for its first system, as `/status` shows it (`systems[].promotion`).
func promotionReadiness(statusPort: Int) throws -> [String: Any]? {
    ((try fetchStatus(port: statusPort))["systems"] as? [[String: Any]])?.first?["promotion"] as? [String: Any]
}

/// Waits until `walship status` at the receiver says the old primary is lost (`promotion ready: …`), as an operator
/// would before `walship promote`; returns that line.
@discardableResult
func waitForPromotionReady(statusPort: Int, timeout: Double = 30) throws -> String {
    var line = ""
    try waitUntil("walship status to say the primary is lost (promotion ready)", timeout: timeout) {
        let status = try run(IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(statusPort)"], check: false)
        line = status.output.split(separator: "\n").first { $0.contains("promotion ") }.map(String.init) ?? ""
        return (line.contains("promotion ready:"), status.output.suffix(1500).description)
    }
    return line
}
