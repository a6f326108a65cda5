import Foundation
import Spool

public struct RestoredDirectory {
    public var dataDirectory: String
    public var systemIdentifier: UInt64
    public var backup: BackupInfo
}

/// Unpacks a stored base backup into a new data directory and configures recovery from the spool:
/// restore_command runs walship restore-wal (read-only), `settings` are appended to postgresql.auto.conf,
/// and `signal` (standby.signal or recovery.signal) is created. The directory ends owned by `osUser`.
public func restoreFromBackup(
    spool: String, system: UInt64?, backup: String?, pgdata: String, settings: [String], signal: String,
    osUser: String, walshipPath: String?
) throws -> RestoredDirectory {
    let spoolRoot = absolutePath(spool)
    let dataDirectory = absolutePath(pgdata)
    let reader = try SpoolReader(root: spoolRoot, system: system)
    let systemDirectory = reader.systemDirectory
    let backups = try BackupCatalog.list(systemDirectory: systemDirectory)
    guard let chosen = backup.map({ id in backups.first { $0.id == id } }) ?? backups.last(where: { $0.status == .complete })
    else {
        throw RestoreError(
            backup.map { "no backup \($0) for system \(reader.systemIdentifier) (hint: walship backups --spool \(spool))" }
                ?? "no complete base backup for system \(reader.systemIdentifier) in \(spool) (hint: walship backup --source ... --to RECEIVER)"
        )
    }
    guard chosen.status == .complete else {
        throw RestoreError("backup \(chosen.id) is not complete: the spool does not yet hold WAL up to \(chosen.stopLSN)")
    }
    let fm = FileManager.default
    if fm.fileExists(atPath: dataDirectory) {
        guard (try fm.contentsOfDirectory(atPath: dataDirectory)).isEmpty else {
            throw RestoreError(
                "\(dataDirectory) is not empty; walship never overwrites a data directory (hint: choose a new --pgdata)")
        }
    }
    let walship = walshipPath ?? ((try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    try checkOSUser(osUser, walship: walship, walDirectory: reader.walDirectory)
    // Checked before the data directory exists: a damaged archive must never become a server that starts.
    do {
        try BackupVerification.verify(chosen, systemDirectory: systemDirectory)
    } catch let error as SpoolError where error.kind == .corrupt {
        throw RestoreError(
            "\(error.message) (hint: use another backup: walship backups --spool \(spool) lists them, then --backup ID; or take a new one with walship backup)"
        )
    }

    try fm.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    let backupDirectory = systemDirectory + "/base/" + chosen.id
    try shell(
        "lz4 -dc \(quote(backupDirectory + "/base.tar.lz4")) | tar -xf - -C \(quote(dataDirectory))",
        what: "unpack backup \(chosen.id)")
    try fm.copyItem(atPath: backupDirectory + "/backup_manifest", toPath: dataDirectory + "/backup_manifest")

    let lines =
        [
            "# Written by walship from backup \(chosen.id) (start \(chosen.startLSN), stop \(chosen.stopLSN))",
            "restore_command = '\(escape("\(walship) restore-wal --spool \(spoolRoot) --system \(reader.systemIdentifier) %f %p"))'",
            "recovery_target_timeline = 'latest'",
        ] + settings
    let autoConf = dataDirectory + "/postgresql.auto.conf"
    let existing = (try? String(contentsOfFile: autoConf, encoding: .utf8)) ?? ""
    try (existing + "\n" + lines.joined(separator: "\n") + "\n").write(toFile: autoConf, atomically: true, encoding: .utf8)
    let signalPath = dataDirectory + "/" + signal
    guard fm.createFile(atPath: signalPath, contents: nil) else {
        throw RestoreError("could not create \(signalPath); without it PostgreSQL would start as a primary, not recover")
    }
    if getuid() == 0 {
        try shell("chown -R \(quote(osUser)): \(quote(dataDirectory))", what: "give the data directory to \(osUser)")
    }
    try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dataDirectory)
    return RestoredDirectory(dataDirectory: dataDirectory, systemIdentifier: reader.systemIdentifier, backup: chosen)
}

/// restore_command runs as the PostgreSQL OS user: it must be able to execute walship and read the spool.
private func checkOSUser(_ osUser: String, walship: String, walDirectory: String) throws {
    guard getuid() == 0, osUser != "root" else { return }
    let canExecute = (try? runQuietly(["/usr/sbin/runuser", "-u", osUser, "--", walship, "--version"])) == 0
    guard canExecute else {
        throw RestoreError(
            "the PostgreSQL OS user \(osUser) cannot execute \(walship) (hint: make install puts walship in /usr/local/bin with mode 0755, then pass --walship-path /usr/local/bin/walship)"
        )
    }
    let canRead =
        (try? runQuietly(["/usr/sbin/runuser", "-u", osUser, "--", "/usr/bin/test", "-r", walDirectory, "-a", "-x", walDirectory]))
        == 0
    guard canRead else {
        throw RestoreError(
            "the PostgreSQL OS user \(osUser) cannot read the spool \(walDirectory) (hint: run walship receive as \(osUser), or give both a common group; the spool is created 0750/0640)"
        )
    }
}

/// What `walship restore` appends to postgresql.auto.conf: a streaming standby of `primaryConninfo` (the
/// receiver's standby endpoint), or else recovery to the target given (or the end of the WAL), then `targetAction`.
public func recoverySettings(
    primaryConninfo: String?, targetTime: String?, targetLSN: String?, targetName: String?, targetAction: String
) -> [String] {
    if let primaryConninfo { return ["primary_conninfo = '\(escape(primaryConninfo))'"] }
    var settings: [String] = []
    if let targetTime { settings.append("recovery_target_time = '\(escape(targetTime))'") }
    if let targetLSN { settings.append("recovery_target_lsn = '\(escape(targetLSN))'") }
    if let targetName { settings.append("recovery_target_name = '\(escape(targetName))'") }
    settings.append("recovery_target_action = '\(targetAction)'")
    return settings
}

public struct RestoreError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Quotes a value for postgresql.conf.
func escape(_ value: String) -> String { value.replacingOccurrences(of: "'", with: "''") }

/// Quotes a word for the shell.
func quote(_ word: String) -> String { "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// Runs a program with no input or output and returns its exit status. posix_spawn and waitpid, not
/// Foundation's Process: that one waits for a descriptor the child inherits, which a daemon the child starts
/// (pg_ctl start) keeps open forever.
func runQuietly(_ arguments: [String]) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    var argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
    guard spawned == 0 else {
        throw RestoreError("cannot run \(arguments[0]): \(String(cString: strerror(spawned)))")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // WIFEXITED / WEXITSTATUS, spelled out (the C macros are not imported).
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

func shell(_ command: String, what: String) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-o", "pipefail", "-c", command]
    let errors = Pipe()
    process.standardError = errors
    try process.run()
    let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw RestoreError("could not \(what): \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
}

func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
