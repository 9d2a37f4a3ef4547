"""Training configuration: one validated model for every ``kd-train`` method, written into every run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kdcore.stats import PatchGrid
from training.backbones import BackboneName
from training.methods import DEFAULT_EPOCHS, DEFAULT_LR, Method


class TrainConfig(BaseModel):
    """Everything that decides a training run, of any method. Defaults are the demo's; the paper's are in the README.

    The image methods (rd4ad, student, multiteacher, mkd) use every field; ``kdae_vector`` uses the ones
    :func:`training.cli.kdae_config` translates into its own :class:`~training.kdae.KDAEConfig`.
    """

    model_config = ConfigDict(extra="forbid")

    data_root: Path = Field(Path("data/demo"), description="folder holding <category>/ in the MVTec AD layout")
    category: str = Field("brick", description="category folder under data_root")
    output: Path = Field(Path("runs/demo"), description="run folder for weights, stats JSON and plots")
    method: Method = Field(Method.RD4AD, description="detector: " + ", ".join(m.value for m in Method))
    teacher_run: Path | None = Field(None, description="method 'student': run folder of the trained RD4AD it imitates")
    backbone: BackboneName = Field(BackboneName.EFFICIENTNET_LITE0, description="frozen teacher encoder (student: "
                                   "its teacher run's, whatever is given)")
    teacher_weights: Path | None = Field(None, description="teacher weights file; default: the backbone's usual place")
    allow_random_teacher: bool = Field(False, description="permit an untrained teacher (scores are meaningless)")
    image_size: int = Field(256, ge=32, description="square input side, a multiple of 32 (image methods only)")
    epochs: int | None = Field(None, ge=1, description="training epochs; default per method (40; student: 80 passes "
                               "over its pool); kdae_vector: of teacher and student each (not given: KD-AE's own "
                               "200 and 100)")
    batch_size: int = Field(16, ge=1, description="batch size; student: of the images its pool is built from (it "
                            "trains on the pool 32 at a time); kdae_vector: of both networks (not given: KD-AE's 32)")
    lr: float | None = Field(
        None, gt=0, description="Adam learning rate; default per method (rd4ad: the paper's 0.005, kdae_vector: "
        "0.01, others 0.001)"
    )
    seed: int = 0
    sigma: float = Field(4.0, gt=0, description="Gaussian smoothing of the anomaly map in pixels")
    linear_heads: Literal["auto", "on", "off"] = Field(
        "auto", description="rd4ad: a linear 1x1 output layer per scale on the decoder; auto: where the teacher's "
        "taps are signed (EfficientNet-Lite), not for the ResNets (the paper's recipe)"
    )
    feature_pool: int | None = Field(
        None, ge=1, description="rd4ad: side of the mean filter over each teacher tap (odd; 1: none, the paper's); "
        "default: 3 for the EfficientNet-Lite teachers (best on the quality benchmark), 1 for the ResNets"
    )
    student_features: Literal["hint", "scratch"] = Field(
        "hint", description="student: hint = the teacher's pretrained encoder, frozen, at half resolution, under a "
        "small trained mixer (best on the quality benchmark); scratch = a 22k-parameter CNN trained from scratch"
    )
    student_target_pool: Literal["mean", "max"] = Field(
        "max", description="student: how the teacher's map is reduced to the student's stride-8 cells; max keeps "
        "a defect of a few pixels at its peak (the teacher's score is a maximum), mean is smoother; on the quality "
        "benchmark max averaged 0.882 image AUROC to the mean's 0.871, within its run-to-run spread"
    )
    student_perturbations: Literal["structural", "broad"] = Field(
        "broad", description="student: the synthetic changes of good images it learns the teacher's reaction "
        "to; structural = noise, blur, shuffle and cut-paste rectangles; broad = those plus colour jitter and "
        "synthetic textures, on soft blobs 0.02 to 0.3 of the side (stars image AUROC 0.927 vs 0.811 for "
        "structural, README)"
    )
    student_memory: int = Field(
        0, ge=0, description="student (hint features): good tap vectors it keeps for one more input channel, each "
        "cell's distance to the nearest of them (0: none, the default: on the quality benchmark it helped page's "
        "pixel AUROC but cost stars' small spots and meadow's pixel AUROC, README)"
    )
    student_pool_copies: int = Field(
        16, ge=0, description="student: perturbed copies of each training image in its pool of teacher targets "
        "(more: more kinds of change seen, a longer prepare)"
    )
    denoising: Literal["off", "structural", "broad", "auto"] = Field(
        "auto", description="rd4ad: the bottleneck reads the teacher's features of a perturbed copy of each "
        "training image (a --student-perturbations family) and the decoder is asked for the unperturbed image's "
        "features, pixel by pixel too; off: the paper's training; auto: train off and broad from the same seed "
        "and keep the one that scores better on validation, about 2.5x the training time of off (README: "
        "denoising won on one draw of meadow and lost on a larger one; validation told which both times)"
    )
    positional_normalization: Literal["auto", "on", "off"] = Field(
        "auto", description="score maps as per-pixel z-scores against the training images' maps; auto: where "
        "that scores better on validation"
    )
    map_scales: Literal["auto", "all", "without_finest", "coarsest"] = Field(
        "auto", description="rd4ad: which teacher scales its map sums: all, all but the finest (stride 4), or the "
        "coarsest (stride 16) alone; auto: the one that scores best on validation, chosen together with "
        "positional normalisation (meadow's grass: coarsest, stars' small spots: all; README)"
    )
    tap_memory: Literal["auto", "off"] = Field(
        "auto", description="rd4ad: add to the map the distance of the teacher's taps (strides 8 and 16) to "
        "their nearest good training vector, PatchCore's principle, with the weight (0, 0.5, 1, 2, 4 or 8 after "
        "z-scores) that scores best on validation; 0 drops the memory (meadow's cut-paste grass: 4; stars and "
        "page: 0; README); off: never"
    )
    patches_per_row: int = Field(1, ge=1, description="patch training: windows per row of every image, each at "
                                 "--image-size (with --patches-per-column; 1 x 1 resizes whole images)")
    patches_per_column: int = Field(1, ge=1, description="patch training: windows per column of every image")
    patch_overlap: float = Field(0.25, ge=0, lt=0.9, description="patch training: fraction of a window shared with "
                                 "its neighbour")
    holdout_fraction: float = Field(0.15, gt=0, lt=1, description="train/good share held out for good-score statistics")
    validation_fraction: float = Field(0.4, gt=0, lt=1, description="test/ share used for thresholds and model selection")
    eval_every: int = Field(5, ge=1, description="validate every N epochs (and after the last) to keep the best weights")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (quick runs and tests)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores (kdae_vector: one)")

    @property
    def patch_grid(self) -> PatchGrid | None:
        """The patch-training grid, or ``None`` for whole images."""
        if self.patches_per_row * self.patches_per_column == 1:
            return None
        return PatchGrid(columns=self.patches_per_row, rows=self.patches_per_column, overlap=self.patch_overlap)

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def training_epochs(self) -> int:
        """``epochs``, or the method's default (image methods; KD-AE reads ``epochs`` itself)."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.method]

    @field_validator("feature_pool")
    @classmethod
    def _odd(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"must be odd (a window centred on each position), got {v}")
        return v

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (the bottleneck works at stride 32), got {v}")
        return v
