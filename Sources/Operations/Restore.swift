import ChildProcess
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
/// `restoreArguments` go into restore_command before `%f %p` (the archive's options, for WAL the spool lacks).
public func restoreFromBackup(
    spool: String, system: UInt64?, backup: String?, pgdata: String, settings: [String], signal: String,
    osUser: String, walshipPath: String?, targetTime: Date? = nil, restoreArguments: [String] = []
) async throws -> RestoredDirectory {
    let spoolRoot = absolutePath(spool)
    let dataDirectory = absolutePath(pgdata)
    let reader = try SpoolReader(root: spoolRoot, system: system)
    let systemDirectory = reader.systemDirectory
    let backups = try BackupCatalog.list(systemDirectory: systemDirectory)
    let chosen = try BackupChoice.choose(backups, requested: backup, endingBy: targetTime) { problem in
        "\(problem) for system \(reader.systemIdentifier) in \(spool) (hint: "
            + (backup == nil ? "walship backup --source ... --to RECEIVER takes one; " : "")
            + "walship backups --spool \(spool) lists them)"
    }
    guard chosen.status == .complete else {
        throw RestoreError("backup \(chosen.id) is not complete: the spool does not yet hold WAL up to \(chosen.stopLSN)")
    }
    try requireEmptyDataDirectory(dataDirectory)
    let walship = walshipExecutable(walshipPath)
    try await checkOSUser(osUser, walship: walship, walDirectory: reader.walDirectory)
    // Checked before the data directory exists: a damaged archive must never become a server that starts.
    do {
        try BackupVerification.verify(chosen, systemDirectory: systemDirectory)
    } catch let error as SpoolError where error.kind == .corrupt {
        throw RestoreError(
            "\(error.message) (hint: use another backup: walship backups --spool \(spool) lists them, then --backup ID; or take a new one with walship backup)"
        )
    }
    let command = restoreWALCommand(
        walship: walship,
        arguments: ["--spool", spoolRoot, "--system", String(reader.systemIdentifier)] + restoreArguments)
    return try await installVerifiedBackup(
        chosen, from: systemDirectory + "/base/" + chosen.id, systemIdentifier: reader.systemIdentifier,
        dataDirectory: dataDirectory, restoreCommand: command, settings: settings, signal: signal, osUser: osUser)
}

/// Refuses a data directory that exists with anything in it: walship never overwrites one.
public func requireEmptyDataDirectory(_ dataDirectory: String) throws {
    let fm = FileManager.default
    if fm.fileExists(atPath: dataDirectory) {
        guard (try fm.contentsOfDirectory(atPath: dataDirectory)).isEmpty else {
            throw RestoreError(
                "\(dataDirectory) is not empty; walship never overwrites a data directory (hint: choose a new --pgdata)")
        }
    }
}

/// Unpacks a backup already checked against its record (`base.tar.lz4` and `backup_manifest` in `backupDirectory`)
/// into `dataDirectory`, configures recovery through `restoreCommand` (already a shell command line) and gives the
/// directory to `osUser`. An unpack that fails removes what it made: no half data directory is left to start.
public func installVerifiedBackup(
    _ chosen: BackupInfo, from backupDirectory: String, systemIdentifier: UInt64, dataDirectory: String,
    restoreCommand: String, settings: [String], signal: String, osUser: String
) async throws -> RestoredDirectory {
    let fm = FileManager.default
    let existed = fm.fileExists(atPath: dataDirectory)
    try fm.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    do {
        try await ChildProcess(
            "/bin/bash",
            [
                "-o", "pipefail", "-c",
                "lz4 -dc \(quote(backupDirectory + "/base.tar.lz4")) | tar -xf - -C \(quote(dataDirectory))",
            ]
        ).runChecked(
            what: "unpack backup \(chosen.id)",
            hint: "lz4 and tar must be installed, and \(dataDirectory) needs room for the whole backup")
        try fm.copyItem(atPath: backupDirectory + "/backup_manifest", toPath: dataDirectory + "/backup_manifest")
    } catch {
        if existed {
            for entry in (try? fm.contentsOfDirectory(atPath: dataDirectory)) ?? [] {
                try? fm.removeItem(atPath: dataDirectory + "/" + entry)
            }
        } else {
            try? fm.removeItem(atPath: dataDirectory)
        }
        throw error
    }

    let lines =
        [
            "# Written by walship from backup \(chosen.id) (start \(chosen.startLSN), stop \(chosen.stopLSN))",
            "restore_command = '\(escape(restoreCommand))'",
            "recovery_target_timeline = 'latest'",
        ] + settings
    try appendSettings(lines, to: dataDirectory, atomically: true)
    let signalPath = dataDirectory + "/" + signal
    guard fm.createFile(atPath: signalPath, contents: nil) else {
        throw RestoreError("could not create \(signalPath); without it PostgreSQL would start as a primary, not recover")
    }
    if getuid() == 0 {
        try await giveToOSUser(dataDirectory, osUser: osUser, recursive: true, what: "the data directory")
    }
    try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dataDirectory)
    return RestoredDirectory(dataDirectory: dataDirectory, systemIdentifier: systemIdentifier, backup: chosen)
}

/// Whether `osUser` can read `path` (and, with `directory`, enter it): asked as that user when running as root,
/// else of this process (which then is the user that runs the server).
public func osUserCanRead(_ path: String, osUser: String, directory: Bool = false) async -> Bool {
    guard getuid() == 0, osUser != "root" else { return access(path, R_OK | (directory ? X_OK : 0)) == 0 }
    let test = ["-r", path] + (directory ? ["-a", "-x", path] : [])
    return (try? await ChildProcess("/usr/bin/test", test, user: osUser).run())?.succeeded == true
}

/// restore_command runs as the PostgreSQL OS user: it must be able to execute walship.
public func checkOSUserRunsWalship(_ osUser: String, walship: String) async throws {
    guard getuid() == 0, osUser != "root" else { return }
    let canExecute = (try? await ChildProcess(walship, ["--version"], user: osUser).run())?.succeeded == true
    guard canExecute else {
        throw RestoreError(
            "the PostgreSQL OS user \(osUser) cannot execute \(walship) (hint: make install puts walship in /usr/local/bin with mode 0755, then pass --walship-path /usr/local/bin/walship)"
        )
    }
}

/// restore_command runs as the PostgreSQL OS user: it must be able to execute walship and read the spool.
private func checkOSUser(_ osUser: String, walship: String, walDirectory: String) async throws {
    guard getuid() == 0, osUser != "root" else { return }
    try await checkOSUserRunsWalship(osUser, walship: walship)
    guard await osUserCanRead(walDirectory, osUser: osUser, directory: true) else {
        throw RestoreError(
            "the PostgreSQL OS user \(osUser) cannot read the spool \(walDirectory) (hint: run walship receive as \(osUser), or give both a common group; the spool is created 0750/0640)"
        )
    }
}

/// The walship binary restore_command runs: `path` when given, else the running one.
public func walshipExecutable(_ path: String?) -> String {
    path ?? ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
}

/// restore_command's program and arguments (before quoting for postgresql.conf): walship restore-wal from `spool`.
func restoreWALCommand(walship: String, spool: String, system: UInt64) -> String {
    "\(walship) restore-wal --spool \(spool) --system \(system) %f %p"
}

/// restore_command as the shell runs it: walship restore-wal with `arguments`, then `%f %p`. Words the shell would
/// split or expand are quoted.
public func restoreWALCommand(walship: String, arguments: [String]) -> String {
    ([walship, "restore-wal"] + arguments).map(shellWord).joined(separator: " ") + " %f %p"
}

/// `word` as the shell reads it: as it is when it holds nothing the shell treats specially, else single-quoted.
public func shellWord(_ word: String) -> String {
    let plain =
        !word.isEmpty
        && word.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) && $0.isASCII || "/._:=@+,-".unicodeScalars.contains($0)
        }
    return plain ? word : quote(word)
}

/// Appends `lines` to the data directory's postgresql.auto.conf. `atomically: false` writes the file in place,
/// keeping its owner (rejoin, as root, writes into a directory the PostgreSQL user owns).
func appendSettings(_ lines: [String], to dataDirectory: String, atomically: Bool = false) throws {
    let path = dataDirectory + "/postgresql.auto.conf"
    let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    try (existing + "\n" + lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: atomically, encoding: .utf8)
}

/// chown to the PostgreSQL OS user and its group, `what` naming `path` in the error.
public func giveToOSUser(_ path: String, osUser: String, recursive: Bool = false, what: String) async throws {
    try await ChildProcess("chown", (recursive ? ["-R"] : []) + ["\(osUser):", path]).runChecked(
        what: "give \(what) to \(osUser)", hint: "--os-user must name the PostgreSQL OS user")
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

public func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
