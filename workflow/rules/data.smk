# Data preparation from files the user has locally (nothing is downloaded; see README, "Data").
# Run only when asked: `snakemake --cores 2 prepare_coco` (paths from config `coco:` or the defaults).
COCO = {"annotations": f"{config['resources']}/coco/annotations/captions_train2017.json",
        "images": f"{config['resources']}/coco/train2017", **config.get("coco", {})}


rule prepare_coco:
    # The caption list (line i = sample i, SHA-256 in manifest.json) and its images at 256 and 512 px.
    input: annotations=COCO["annotations"], images=COCO["images"]
    output: f"{config['resources']}/datasets/coco30k/COCO_caption_prompts_30k.txt"
    log: "logs/prepare_coco.log"
    shell: "dsbench prepare-coco --annotations {input.annotations:q} --images {input.images:q} --resources {config[resources]:q} --force > {log} 2>&1"
