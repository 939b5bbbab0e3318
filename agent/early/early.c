// libbpftime_early.so: starts the agent before the constructors of the application's own
// libraries run, so that what they do (system calls, calls of probed functions) is traced, as
// the kernel traces it.
//
// The dynamic loader runs constructors dependencies first, and among objects that do not
// depend on one another, the last loaded first. A preloaded library (the agent) is loaded right
// after the program, so its constructor runs after those of the program's libraries
// (libselinux's, in `ls`); a library the agent needs is loaded after all of them, so its
// constructor runs before theirs. This one only calls the agent's start, which is already
// relocated (the loader relocates everything before it runs any constructor). It needs what the
// agent needs, so that those are initialised first.
//
// glibc calls constructors with the program's argc, argv and envp; the agent keeps argv and envp
// (the arrays the execve that started the program left on its stack).
extern void bpftime_agent_early_init(int argc, char **argv, char **envp) __attribute__((weak));

__attribute__((constructor)) static void bpftime_early(int argc, char **argv, char **envp)
{
    if (bpftime_agent_early_init)
        bpftime_agent_early_init(argc, argv, envp);
}
