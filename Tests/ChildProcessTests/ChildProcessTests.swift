import ChildProcess
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ChildProcessTests {
    @Test func trueSucceeds() async throws {
        let result = try await ChildProcess("/bin/true").run()
        #expect(result.termination == .exited(0))
        #expect(result.succeeded)
        #expect(result.status == 0)
    }

    @Test func falseExitsWithOneAndRunCheckedSaysWhatFailed() async throws {
        let result = try await ChildProcess("/bin/false").run()
        #expect(result.termination == .exited(1))
        #expect(!result.succeeded)
        await #expect {
            try await ChildProcess("/bin/false").runChecked(what: "test the tests", hint: "there is none")
        } throws: { error in
            "\(error)" == "could not test the tests: /bin/false exited with status 1 (hint: there is none)"
        }
    }

    @Test func aFailureEndsWithTheProgramsStandardError() async throws {
        let child = ChildProcess("/bin/sh", ["-c", "echo one >&2; echo two >&2; echo 'tar: it broke' >&2; exit 2"])
        do {
            try await child.runChecked(what: "unpack backup b1")
            Issue.record("exit status 2 must throw")
        } catch {
            #expect(error.kind == .failed(.init(termination: .exited(2), standardError: "one\ntwo\ntar: it broke\n")))
            #expect("\(error)" == "could not unpack backup b1: /bin/sh exited with status 2: one\ntwo\ntar: it broke")
        }
    }

    @Test func aMissingProgramCannotStart() async throws {
        do {
            _ = try await ChildProcess("/nonexistent/walship-no-such-program", ["x"]).run()
            Issue.record("a missing program must throw")
        } catch {
            #expect(error.kind == .cannotStart(reason: "no such program, or not executable"))
            #expect("\(error)" == "cannot run /nonexistent/walship-no-such-program: no such program, or not executable")
        }
        await #expect(throws: ChildProcessError.self) {
            try await ChildProcess("walship-no-such-program-on-the-path").runChecked(what: "run it", hint: "install it")
        }
    }

    @Test func capturesStandardOutputAndErrorApart() async throws {
        let result = try await ChildProcess(
            "/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], output: .captured, errorOutput: .captured
        ).run()
        #expect(result.standardOutput == "out\n")
        #expect(result.standardError == "err\n")
        #expect(result.status == 3)
    }

    @Test func keepsOnlyTheEndOfALongOutput() async throws {
        let result = try await ChildProcess(
            "/bin/sh", ["-c", "head -c 100000 /dev/zero | tr '\\0' a; echo END"], output: .captured, captureLimit: 10
        ).run()
        #expect(result.standardOutput == "aaaaaaEND\n")
    }

    @Test func discardedOutputIsNotKept() async throws {
        let result = try await ChildProcess("/bin/sh", ["-c", "echo out; echo err >&2"], errorOutput: .discarded).run()
        #expect(result.standardOutput.isEmpty)
        #expect(result.standardError.isEmpty)
    }

    @Test func inputEnvironmentAndWorkingDirectory() async throws {
        let fed = try await ChildProcess("/bin/cat", input: .bytes(Array("{\"event\":\"firing\"}".utf8)), output: .captured)
            .run()
        #expect(fed.standardOutput == "{\"event\":\"firing\"}")
        let environment = try await ChildProcess(
            "/bin/sh", ["-c", "echo \"$WALSHIP_TEST_VARIABLE:$PATH\""], environment: ["WALSHIP_TEST_VARIABLE": "set"],
            output: .captured
        ).run()
        #expect(environment.standardOutput == "set:\(ProcessInfo.processInfo.environment["PATH"] ?? "")\n")
        let directory = try await ChildProcess("/bin/pwd", workingDirectory: "/usr", output: .captured).run()
        #expect(directory.standardOutput == "/usr\n")
        await #expect(throws: ChildProcessError.self) {
            try await ChildProcess("/bin/pwd", workingDirectory: "/nonexistent/walship").run()
        }
    }

    /// Whether a process of this pid still exists (a zombie counts until it is reaped).
    func isRunning(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 }

    // No wall-clock bounds below: other suites may keep every thread of the test process busy for seconds.
    // A timeout or a wait that does not work shows as a pid still alive, or one already gone.

    @Test func aProgramThatOverrunsItsTimeoutIsStopped() async throws {
        let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("walship-timeout-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: pidFile) }
        do {
            _ = try await ChildProcess("/bin/sh", ["-c", "echo $$ > \(pidFile); exec sleep 120"], timeout: .milliseconds(200))
                .run()
            Issue.record("sleep 120 must overrun a 200 ms timeout")
        } catch {
            #expect(error.kind == .timedOut(.milliseconds(200)))
            #expect("\(error)".hasPrefix("/bin/sh did not finish within"))
        }
        let pid = pid_t((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(pid.map { !isRunning($0) } == true, "the program must be gone when run() throws")
        let quick = try await ChildProcess("/bin/true", timeout: .seconds(60)).run()
        #expect(quick.succeeded)
    }

    @Test func aDaemonTheProgramLeavesBehindDoesNotHoldUpTheWait() async throws {
        // What pg_ctl start does: the server it starts keeps the descriptors it inherited.
        let result = try await ChildProcess(
            "/bin/sh", ["-c", "sleep 120 & echo $!"], output: .captured, errorOutput: .captured
        ).run()
        let daemon = try #require(pid_t(result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(isRunning(daemon), "run() must return while the daemon still holds its output")
        kill(daemon, SIGKILL)
    }

    @Test func aSignalIsReportedAsTheShellDoes() async throws {
        let result = try await ChildProcess("/bin/sh", ["-c", "kill -TERM $$"]).run()
        #expect(result.termination == .signalled(SIGTERM))
        #expect(result.status == 128 + SIGTERM)
        await #expect {
            try await ChildProcess("/bin/sh", ["-c", "kill -TERM $$"]).runChecked(what: "stop")
        } throws: { error in
            "\(error)" == "could not stop: /bin/sh was killed by signal \(SIGTERM)"
        }
    }

    @Test(.enabled(if: geteuid() == 0 && getpwnam("nobody") != nil, "needs root and the user nobody"))
    func runsAsAnotherUserWhenRoot() async throws {
        let result = try await ChildProcess(
            "/bin/sh", ["-c", "id -u; echo $USER"], user: "nobody", output: .captured
        ).run()
        #expect(result.standardOutput == "\(getpwnam("nobody")!.pointee.pw_uid)\nnobody\n")
        let me = try await ChildProcess("/usr/bin/id", ["-u"], user: "root", output: .captured).run()
        #expect(me.standardOutput == "0\n")
        // The user's own groups, as the spool's permissions need.
        let groups = try await ChildProcess("/usr/bin/id", ["-G"], user: "nobody", output: .captured).run()
        #expect(groups.standardOutput == "\(getpwnam("nobody")!.pointee.pw_gid)\n")
        let missing = try await ChildProcess("/nonexistent/walship-no-such-program", user: "nobody").run()
        #expect(!missing.succeeded)
        #expect(missing.standardError.contains("failed to execute /nonexistent/walship-no-such-program"))
    }

    @Test func anUnknownUserCannotRunAnything() async throws {
        do {
            _ = try await ChildProcess("/bin/true", user: "walship-no-such-user").run()
            Issue.record("an unknown user must throw")
        } catch {
            #expect(
                "\(error)"
                    == "cannot run /bin/true: there is no OS user walship-no-such-user (hint: create the user, or name another)")
        }
    }
}

extension ChildProcessTests {
    /// A secret's output (the archive's keyring) is captured on the memory file system, never in the temporary
    /// directory on disk.
    @Test func outputCapturedInMemoryIsReturned() async throws {
        let result = try await ChildProcess(
            "/bin/sh", ["-c", "echo keyring; ls -l /proc/$$/fd/1"], output: .capturedInMemory
        ).run()
        #expect(result.succeeded)
        let lines = result.standardOutput.split(separator: "\n")
        #expect(lines.first == "keyring")
        // Standard output is an unlinked file under /dev/shm.
        #expect(lines.last?.contains("/dev/shm/walship-child-") == true, "\(result.standardOutput)")
    }
}
