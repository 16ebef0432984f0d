"""The reproducibility check catches planted nondeterminism and says where it is. Apart from tests/test_reproduce.py,
which holds the check on the pipeline as it is, so that the two pairs of full runs go to different test workers."""

import pytest
from conftest import reproduce, verdict_lines

pytestmark = pytest.mark.slow


def test_planted_nondeterminism_is_caught_and_located(pipeline_repo_factory):
    repo = pipeline_repo_factory("reproduce-planted")
    tokenization = repo.root / "pipeline" / "tokenization.py"
    packing = "        blocks, dropped = pack_blocks(tokens, block_size)\n"
    assert packing in tokenization.read_text()
    # An unseeded shuffle of the packed blocks: the kind of bug that "seeded" pipelines still have.
    tokenization.write_text(
        tokenization.read_text().replace(
            packing, packing + "        import numpy as np\n        np.random.default_rng().shuffle(blocks)\n"
        )
    )
    repo.commit("plant an unseeded shuffle")
    result = reproduce(repo, "twice", "--profile", "ci")
    assert result.returncode == 1
    verdicts = verdict_lines(result.stdout)
    assert verdicts["data/prepared"] == "same"
    assert verdicts["data/tokenized"] == "DIFFERS"
    assert verdicts["models/finetuned"] == "DIFFERS"
    assert "metric differs: eval.json:finetuned.validation.loss" in result.stdout
    assert "numerics: the same in both runs" in result.stdout  # the pipeline's doing, not the machine's
    assert result.stdout.rstrip().endswith("NOT REPRODUCED")
