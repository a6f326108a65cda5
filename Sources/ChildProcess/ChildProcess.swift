import Foundation
import Subprocess
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A program walship runs, and how: the one place a child process is started (over swift-subprocess).
///
/// Standard input, output and error are regular files or /dev/null, never pipes: a daemon the program
/// starts (`pg_ctl start`) inherits them and may keep them open for ever, and a pipe would make the wait
/// last as long; an `--alert-command` that never reads its input must not block or kill walship.
public struct ChildProcess: Sendable {
    public enum Input: Sendable, Equatable {
        /// /dev/null.
        case none
        case bytes([UInt8])
    }

    public enum Output: Sendable, Equatable {
        /// /dev/null.
        case discarded
        /// walship's own standard output or error.
        case inherited
        /// Kept, at most `captureLimit` bytes (the last ones), in the result.
        case captured
        /// Kept like `.captured`, in a file on the memory file system /dev/shm (unlinked at once) instead of the
        /// temporary directory: for a secret (the archive's keyring) that must never reach a disk. Refused when
        /// /dev/shm is not tmpfs.
        case capturedInMemory
    }

    /// An absolute path, or a name looked up in `PATH`.
    public var program: String
    public var arguments: [String]
    /// Variables set (or replaced) on top of walship's own environment.
    public var environment: [String: String]
    public var workingDirectory: String?
    /// The OS user to run as; nil for walship's own. Switching to another user needs root and goes through
    /// runuser: a program that user cannot execute then ends with runuser's failing exit status (and its
    /// message on standard error) instead of failing to start.
    public var user: String?
    public var input: Input
    public var output: Output
    public var errorOutput: Output
    /// How many bytes of each captured stream are kept: its end, where programs say why they failed.
    public var captureLimit: Int
    /// How long the program may run; it is then asked to stop (SIGTERM) and killed 5 s later.
    public var timeout: Duration?

    public init(
        _ program: String, _ arguments: [String] = [], environment: [String: String] = [:],
        workingDirectory: String? = nil, user: String? = nil, input: Input = .none, output: Output = .discarded,
        errorOutput: Output = .captured, captureLimit: Int = 64 * 1024, timeout: Duration? = nil
    ) {
        self.program = program
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.user = user
        self.input = input
        self.output = output
        self.errorOutput = errorOutput
        self.captureLimit = captureLimit
        self.timeout = timeout
    }

    /// The program with its arguments, as a shell would show it.
    public var commandLine: String { ([program] + arguments).joined(separator: " ") }

    /// How the program ended, with what it wrote to the captured streams.
    public struct Result: Sendable, Equatable {
        public enum Termination: Sendable, Equatable {
            case exited(Int32)
            case signalled(Int32)
        }

        public var termination: Termination
        public var standardOutput: String
        public var standardError: String

        public init(termination: Termination, standardOutput: String = "", standardError: String = "") {
            self.termination = termination
            self.standardOutput = standardOutput
            self.standardError = standardError
        }

        public var succeeded: Bool { termination == .exited(0) }

        /// The exit status as a shell reports it: the exit code, or 128 plus the signal.
        public var status: Int32 {
            switch termination {
            case .exited(let code): code
            case .signalled(let signal): 128 + signal
            }
        }

        /// The last `lines` lines of standard error, joined by newlines, without surrounding blank space.
        public func errorTail(lines: Int = 5) -> String {
            standardError.trimmingCharacters(in: .whitespacesAndNewlines).split(
                separator: "\n", omittingEmptySubsequences: false
            ).suffix(lines).joined(separator: "\n")
        }
    }

    /// Runs the program to its end. Throws only when it cannot be started or overran `timeout`: an exit
    /// status other than 0 is in the result (`runChecked` turns it into an error).
    public func run() async throws(ChildProcessError) -> Result {
        let switchTo = try userToSwitchTo()
        var files = StreamFiles()
        defer { files.closeAll() }
        let stdin: FileDescriptor
        let stdout: FileDescriptor
        let stderr: FileDescriptor
        do {
            stdin = try files.input(input)
            stdout = try files.output(output, inherited: .standardOutput)
            stderr = try files.output(errorOutput, inherited: .standardError)
        } catch {
            throw ChildProcessError(self, .cannotStart(reason: "cannot set up its input and output: \(error)"))
        }
        var options = PlatformOptions()
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .seconds(5))]
        var variables: [Environment.Key: String?] = [:]
        for (name, value) in environment { variables[Environment.Key(stringLiteral: name)] = value }
        // Another user through runuser, which switches in a process of its own (and sets HOME, USER and
        // LOGNAME as su does): switching in a child forked from this multi-threaded process can hang in
        // glibc's setgroups.
        let executable: Executable =
            switchTo != nil ? .path(FilePath(Self.runuser)) : program.contains("/") ? .path(FilePath(program)) : .name(program)
        let configuration = Configuration(
            executable: executable, arguments: Arguments(switchTo.map { ["-u", $0, "--", program] + arguments } ?? arguments),
            environment: .inherit.updating(variables), workingDirectory: workingDirectory.map { FilePath($0) },
            platformOptions: options)

        let termination: Result.Termination
        switch await Self.wait(for: configuration, stdin: stdin, stdout: stdout, stderr: stderr, timeout: timeout) {
        case .terminated(let ended): termination = ended
        case .notRun(let kind): throw ChildProcessError(self, kind)
        case .timedOut: throw ChildProcessError(self, .timedOut(timeout ?? .zero))
        }
        return Result(
            termination: termination,
            standardOutput: output.isCaptured ? Self.tail(of: stdout, limit: captureLimit) : "",
            standardError: errorOutput.isCaptured ? Self.tail(of: stderr, limit: captureLimit) : "")
    }

    /// Runs the program and requires exit status 0; otherwise the error says what failed (`what`, such as
    /// "unpack backup X"), ends with the program's standard error, and adds `hint`.
    @discardableResult
    public func runChecked(what: String, hint: String? = nil) async throws(ChildProcessError) -> Result {
        var child = self
        if child.errorOutput == .discarded { child.errorOutput = .captured }
        let result: Result
        do { result = try await child.run() } catch {
            var error = error
            error.what = what
            error.hint = error.hint ?? hint
            throw error
        }
        guard result.succeeded else {
            var error = ChildProcessError(self, .failed(result))
            error.what = what
            error.hint = hint
            throw error
        }
        return result
    }

    /// How waiting for the program ended.
    private enum Ending: Sendable {
        case terminated(Result.Termination)
        case notRun(ChildProcessError.Kind)
        case timedOut
    }

    private static func wait(
        for configuration: Configuration, stdin: FileDescriptor, stdout: FileDescriptor, stderr: FileDescriptor,
        timeout: Duration?
    ) async -> Ending {
        await withTaskGroup(of: Ending.self) { group in
            group.addTask {
                do {
                    let execution = try await Subprocess.run(
                        configuration, input: .fileDescriptor(stdin, closeAfterSpawningProcess: false),
                        output: .fileDescriptor(stdout, closeAfterSpawningProcess: false),
                        error: .fileDescriptor(stderr, closeAfterSpawningProcess: false))
                    switch execution.terminationStatus {
                    case .exited(let code): return .terminated(.exited(code))
                    case .signaled(let signal): return .terminated(.signalled(signal))
                    }
                } catch let error as SubprocessError {
                    return .notRun(.cannotStart(reason: reason(error)))
                } catch {
                    return .notRun(Task.isCancelled ? .cancelled : .cannotStart(reason: "\(error)"))
                }
            }
            if let timeout {
                group.addTask {
                    do { try await Task.sleep(for: timeout) } catch { return .notRun(.cancelled) }
                    return .timedOut
                }
            }
            let first = await group.next() ?? .notRun(.cancelled)
            // Stops the other task: the timer, or the program (its teardown: SIGTERM, then SIGKILL).
            group.cancelAll()
            if case .timedOut = first {
                // Waits until the program is gone, so nothing it does outlives the error.
                while await group.next() != nil {}
            }
            return first
        }
    }

    /// What swift-subprocess's error means for someone reading walship's message.
    private static func reason(_ error: SubprocessError) -> String {
        if error.code == .executableNotFound { return "no such program, or not executable" }
        if error.code == .failedToChangeWorkingDirectory { return "cannot enter its working directory" }
        if let errno = error.underlyingError { return errno.description }
        return "\(error)"
    }

    /// The last `limit` bytes written to a captured stream's file, as text.
    private static func tail(of file: FileDescriptor, limit: Int) -> String {
        guard let size = try? file.seek(offset: 0, from: .end), size > 0 else { return "" }
        let start = max(0, size - Int64(limit))
        var bytes = [UInt8](repeating: 0, count: Int(size - start))
        let count = (try? bytes.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: start, into: $0) }) ?? 0
        return String(decoding: bytes.prefix(count), as: UTF8.self)
    }

    static let runuser = "/usr/sbin/runuser"

    /// The user to switch to, or nil when the program runs as walship's own user.
    private func userToSwitchTo() throws(ChildProcessError) -> String? {
        guard let user else { return nil }
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16 * 1024)
        guard getpwnam_r(user, &entry, &buffer, buffer.count, &found) == 0, found != nil else {
            throw ChildProcessError(
                self, .cannotStart(reason: "there is no OS user \(user)"), hint: "create the user, or name another")
        }
        guard entry.pw_uid != geteuid() else { return nil }
        guard geteuid() == 0 else {
            throw ChildProcessError(
                self, .cannotStart(reason: "only root can run a program as \(user)"),
                hint: "run walship as root or as \(user)")
        }
        return user
    }
}

/// Why a program did not run to a successful end: it could not start, overran its time, or (from
/// `runChecked`) exited with a failure.
public struct ChildProcessError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        case cannotStart(reason: String)
        case timedOut(Duration)
        case failed(ChildProcess.Result)
        /// The task running it was cancelled; the program was stopped.
        case cancelled
    }

    public var kind: Kind
    /// The program with its arguments.
    public var commandLine: String
    public var program: String
    /// What running it was for, in words ("unpack backup X"); the error then starts with "could not …".
    public var what: String?
    public var hint: String?

    init(_ child: ChildProcess, _ kind: Kind, hint: String? = nil) {
        self.kind = kind
        self.commandLine = child.commandLine
        self.program = child.program
        self.hint = hint
    }

    public var description: String {
        let cause: String
        switch kind {
        case .cannotStart(let reason): cause = "cannot run \(program): \(reason)"
        case .timedOut(let limit): cause = "\(program) did not finish within \(limit); it was stopped"
        case .cancelled: cause = "\(program) was stopped before it finished"
        case .failed(let result):
            let tail = result.errorTail()
            let ending =
                switch result.termination {
                case .exited(let code): "exited with status \(code)"
                case .signalled(let signal): "was killed by signal \(signal)"
                }
            cause = tail.isEmpty ? "\(program) \(ending)" : "\(program) \(ending): \(tail)"
        }
        let text = what.map { "could not \($0): \(cause)" } ?? cause
        return hint.map { "\(text) (hint: \($0))" } ?? text
    }
}

extension ChildProcess.Output {
    var isCaptured: Bool { self == .captured || self == .capturedInMemory }
}

/// The files behind a child's standard streams, closed once it has ended.
private struct StreamFiles {
    private var opened: [FileDescriptor] = []

    mutating func input(_ input: ChildProcess.Input) throws -> FileDescriptor {
        switch input {
        case .none: return try open("/dev/null", .readOnly)
        case .bytes(let bytes):
            let file = try anonymousFile()
            _ = try file.writeAll(bytes)
            _ = try file.seek(offset: 0, from: .start)
            return file
        }
    }

    mutating func output(_ output: ChildProcess.Output, inherited: FileDescriptor) throws -> FileDescriptor {
        switch output {
        case .discarded: return try open("/dev/null", .writeOnly)
        case .inherited: return inherited
        case .captured: return try anonymousFile()
        case .capturedInMemory: return try anonymousFile(directory: try Self.memoryDirectory())
        }
    }

    mutating func closeAll() {
        for file in opened { try? file.close() }
        opened = []
    }

    private mutating func open(_ path: String, _ mode: FileDescriptor.AccessMode) throws -> FileDescriptor {
        let file = try FileDescriptor.open(FilePath(path), mode, options: .closeOnExec)
        opened.append(file)
        return file
    }

    /// A file in the temporary directory with no name left: nothing remains once it is closed.
    /// /dev/shm when the mount table says it is tmpfs.
    static func memoryDirectory() throws -> String {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let isMemory = mounts.split(separator: "\n").contains {
            let fields = $0.split(separator: " ")
            return fields.count > 2 && fields[1] == "/dev/shm" && fields[2] == "tmpfs"
        }
        guard isMemory else { throw NoMemoryFileSystem() }
        return "/dev/shm"
    }

    struct NoMemoryFileSystem: Error, CustomStringConvertible {
        var description: String { "/dev/shm is not a memory file system (tmpfs), and this output must not reach a disk" }
    }

    private mutating func anonymousFile(directory given: String? = nil) throws -> FileDescriptor {
        let directory =
            given ?? ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((directory + "/walship-child-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let file = FileDescriptor(rawValue: fd)
        opened.append(file)
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        return file
    }
}
