# An OpenRLHF 0.11.2 GRPO launch matching the bundled sample (32 prompts x 8 samples per step,
# 1024-token responses): aggscope reads the arguments of the command line below.
#   aggscope inspect --config sample_data/openrlhf_grpo.sh
python3 -m openrlhf.cli.train_ppo_ray \
   --actor.num_nodes 1 \
   --actor.num_gpus_per_node 4 \
   --rollout.batch_size 32 \
   --rollout.n_samples_per_prompt 8 \
   --rollout.max_new_tokens 1024 \
   --train.batch_size 256 \
   --train.micro_batch_size 8 \
   --train.max_epochs 1 \
   --actor.loss_agg_mode seq-mean-token-mean \
   --actor.policy_loss_type ppo \
   --algo.advantage.estimator group_norm \
   --actor.eps_clip_low_high 0.2 0.28 \
   --algo.kl.init_coef 0.0
