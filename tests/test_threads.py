"""Intra-op threads chosen by the work: a user's setting is never overridden, and every call restores the count."""

from __future__ import annotations

import pytest
import torch

from var_clip.generate_batch import main as generate_batch
from var_clip.pipelines.next_scale import NextScalePipelineMixin
from var_clip.utils import threads
from var_clip.utils.threads import (
    WORK_PER_THREAD,
    pinned_threads,
    thread_count_for,
    threads_for_work,
    user_chose_threads,
)

DEFAULT = threads._DEFAULT_THREADS  # torch's own count when nothing is set
# with one core the automatic choice is torch's default either way: these tests would then prove nothing
needs_two_cores = pytest.mark.skipif(DEFAULT < 2, reason="torch's default is one thread on this machine")


@pytest.fixture
def untouched_threads(monkeypatch):
    """The state of a user who set nothing: torch's default count, no thread variables in the environment.

    (The test session itself runs on one thread, see conftest; that count is restored afterwards.)"""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def busy_machine(monkeypatch):
    """Other processes keep a core busy, whatever this machine is doing: the choice follows the work alone."""
    monkeypatch.setattr(threads, "cores_used_by_others", lambda: 1.0)


@pytest.fixture
def models_dir(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "text")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    return tmp_path


def counts_during_call(pipe, **kwargs) -> list[int]:
    """The thread count at every scale of one call of the pipeline."""
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append(torch.get_num_threads())
        return {}

    pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), output_type="np",
         callback_on_step_end=record, **kwargs)
    return seen


@needs_two_cores
def test_a_tiny_model_runs_on_one_thread_on_a_busy_machine_and_the_count_is_restored(tiny_pipe, untouched_threads,
                                                                                      busy_machine):
    assert not user_chose_threads()
    assert set(counts_during_call(tiny_pipe)) == {1}
    assert torch.get_num_threads() == DEFAULT


@needs_two_cores
def test_an_idle_machine_gives_every_core_to_any_call(tiny_pipe, untouched_threads, monkeypatch):
    monkeypatch.setattr(threads, "cores_used_by_others", lambda: 0.0)
    assert set(counts_during_call(tiny_pipe)) == {DEFAULT}
    assert thread_count_for(0, others=threads.IDLE_BELOW_CORES / 2) == DEFAULT
    assert thread_count_for(0, others=threads.IDLE_BELOW_CORES) == thread_count_for(0, others=None) == 1
    assert torch.get_num_threads() == DEFAULT


def test_the_load_of_other_processes_is_read_from_the_cpu_clock(monkeypatch):
    clock = iter([(0.0, 0.0, 0.0), (1.0, 1.5, 0.5), (1.01, 9.0, 0.5), (3.0, 1.6, 2.4)])
    monkeypatch.setattr(threads, "_cpu_clock", lambda: next(clock))
    monkeypatch.setattr(threads, "_last_look", None)
    assert threads.cores_used_by_others() is None  # the first look only starts the clock
    assert threads.cores_used_by_others() == pytest.approx(1.0)  # 1.5 busy seconds, 0.5 of them ours, in 1 s
    assert threads.cores_used_by_others() == pytest.approx(1.0)  # 10 ms is too short a look: the last answer
    # more CPU of ours than the machine counted (the two are sampled apart) reads as idle, never below 0
    assert threads.cores_used_by_others() == 0.0
    monkeypatch.setattr(threads, "_cpu_clock", lambda: None)
    assert threads.cores_used_by_others() is None  # a system that does not say
    assert 0.0 <= (threads._cpu_clock() or (0, 0, 0))[2]


def test_the_choice_follows_the_work(untouched_threads, busy_machine):
    assert thread_count_for(0) == thread_count_for(WORK_PER_THREAD * 1.9) == 1
    assert thread_count_for(WORK_PER_THREAD * 2) == min(2, DEFAULT)
    assert thread_count_for(WORK_PER_THREAD * 1000) == DEFAULT
    with threads_for_work(WORK_PER_THREAD / 2) as small:
        assert small == torch.get_num_threads() == 1
    with threads_for_work(WORK_PER_THREAD * 1000) as large:
        assert large == torch.get_num_threads() == DEFAULT
    assert torch.get_num_threads() == DEFAULT


def test_the_work_of_a_call_counts_parameters_tokens_and_guided_rows(tiny_pipe, tiny_class_pipe, monkeypatch):
    works = []
    monkeypatch.setattr("var_clip.pipelines.next_scale.threads_for_work",
                        lambda work: (works.append(work), threads_for_work(work))[1])
    parameters = sum(p.numel() for p in tiny_pipe.transformer.parameters())
    L = sum(pn * pn for pn in tiny_pipe.transformer.config.patch_nums)
    counts_during_call(tiny_pipe)  # 2 images, guided: 4 rows
    counts_during_call(tiny_pipe, guidance_scale=0.0)  # unguided: 2 rows
    assert works == [parameters * L * 4, parameters * L * 2]
    tiny_class_pipe(class_labels=[1, 2, 3], output_type="np")
    assert works[-1] == sum(p.numel() for p in tiny_class_pipe.transformer.parameters()) * L * 6


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
@needs_two_cores
def test_a_thread_variable_in_the_environment_wins(tiny_pipe, untouched_threads, monkeypatch, variable):
    # torch read the variable at start-up; here the count it gave is torch's default, set by the user's variable
    monkeypatch.setenv(variable, str(DEFAULT))
    assert user_chose_threads()
    assert set(counts_during_call(tiny_pipe)) == {DEFAULT}
    with threads_for_work(0) as count:
        assert count == DEFAULT


@needs_two_cores
def test_set_num_threads_wins_and_stays(tiny_pipe, untouched_threads):
    torch.set_num_threads(DEFAULT + 1)  # any count other than torch's default is the user's
    assert set(counts_during_call(tiny_pipe)) == {DEFAULT + 1}
    assert torch.get_num_threads() == DEFAULT + 1


@needs_two_cores
def test_a_pinned_count_wins_even_when_it_is_torchs_default(tiny_pipe, untouched_threads, busy_machine):
    with pinned_threads(DEFAULT):
        assert set(counts_during_call(tiny_pipe)) == {DEFAULT}
    assert not user_chose_threads()  # the pin ends with its block
    with pinned_threads(None):  # a command without --threads: the automatic choice stays
        assert set(counts_during_call(tiny_pipe)) == {1}


@needs_two_cores
def test_generate_batch_threads_option_wins(models_dir, untouched_threads, fresh_accelerate_state, monkeypatch,
                                            busy_machine):
    seen = []
    sample = NextScalePipelineMixin.sample_next_scale

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(NextScalePipelineMixin, "sample_next_scale", recording)
    common = ["--model", str(models_dir / "text"), "--prompts", str(models_dir / "prompts.txt"), "--no-progress-bar"]
    assert generate_batch([*common, "--output-dir", str(models_dir / "auto")]) == 0
    assert generate_batch([*common, "--output-dir", str(models_dir / "pinned"), "--threads", str(DEFAULT)]) == 0
    assert seen == [1, DEFAULT]
    assert torch.get_num_threads() == DEFAULT and not user_chose_threads()


def test_generate_batch_refuses_a_thread_count_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_batch(["--prompts", "p.txt", "--output-dir", "out", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.parametrize("chosen", ["automatic", "user"])
def test_the_count_is_restored_when_the_call_raises(tiny_pipe, untouched_threads, chosen):
    before = DEFAULT if chosen == "automatic" else DEFAULT + 1
    torch.set_num_threads(before)

    def fail(pipe, step, timestep, tensors):
        raise RuntimeError(f"stopped at scale {step} on {torch.get_num_threads()} threads")

    with pytest.raises(RuntimeError, match="stopped at scale 0 on"):
        tiny_pipe("a red circle", callback_on_step_end=fail)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("count", [0, -1, 1.5, True, None])
def test_bad_thread_counts_are_refused(count):
    with pytest.raises(ValueError, match="num_threads"):
        with threads.intra_op_threads(count):
            pass
